public enum VerifyStub {}
