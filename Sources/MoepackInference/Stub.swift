public enum InferenceStub {}
