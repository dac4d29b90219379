public enum PackingStub {}
