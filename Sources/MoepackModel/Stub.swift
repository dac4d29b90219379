public enum ModelStub {}
