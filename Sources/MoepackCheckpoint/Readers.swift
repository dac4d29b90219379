import MoepackCore

// Container dispatch. Each reader lives in its own file.

func openFile(_ path: String, options: OpenOptions) throws -> any TensorSource {
    throw MoepackError(.unsupported, file: path, "container readers not implemented yet")
}

func openFolder(_ path: String, options: OpenOptions) throws -> any TensorSource {
    throw MoepackError(.unsupported, file: path, "folder readers not implemented yet")
}
