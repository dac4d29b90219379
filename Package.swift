// swift-tools-version: 6.0
import PackageDescription

// Build time (issue 15): the release build compiles each module whole, one after another along
// Core → Checkpoint → Model → Packing → Inference → Heads → Verify → CLI, and the optimiser is most of
// it. Modules whose run time is dominated by system libraries or by other modules' loops skip it in
// release builds: the checkpoint readers (bytes come from pread, zlib, HDF5; conversions are in Core),
// the M³ViT name tables and folds, packing (its element loops are FixedPoint's encoder, SHA-256 is
// libcrypto; `suggest` takes each tensor's range from the encoder's statistics), the board's
// host-program generator, the reports and the CLI. Measured by task-clock / `time` on pack (bundled,
// 216 MB and 861 MB training checkpoints, with --report), suggest, sweep, verify, check and run:
// unchanged within noise; `inspect` 31 → 70 ms (Swift generic metadata at start-up). The arithmetic
// stays optimised: Core (dtype conversion, SHA-256 glue), FixedPoint (the encoder), Inference and Heads.
let unoptimizedInRelease: [SwiftSetting] = [.unsafeFlags(["-Onone"], .when(configuration: .release))]
// The fixed-point encoder's SIMD paths are tested exhaustively; in debug builds its module is still
// optimised, so `make test` checks the code the release binary runs and takes seconds, not a minute.
let optimizedInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "moepack",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "moepack", targets: ["moepack"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries from Debian packages, found through pkg-config.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5",
                       providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),

        // Shared vocabulary: errors, dtypes, float tensors.
        .target(name: "MoepackCore", dependencies: ["CCrypto"]),
        // Stage 1: checkpoint containers -> TensorSource (knows formats, not M3ViT).
        .target(name: "MoepackCheckpoint", dependencies: ["MoepackCore", "CZlib", "CHDF5"], swiftSettings: unoptimizedInRelease),
        // Stage 2: fixed point (knows numbers and bits only).
        .target(name: "MoepackFixedPoint", dependencies: ["MoepackCore"], swiftSettings: optimizedInDebug),
        // Stage 3: M3ViT name tables, config inference, folds -> kernel tensors.
        .target(name: "MoepackModel", dependencies: ["MoepackCore", "MoepackCheckpoint"], swiftSettings: unoptimizedInRelease),
        // Stage 4: kernel profile, DDR layout, image + manifest + C header.
        .target(name: "MoepackPacking",
                dependencies: ["MoepackCore", "MoepackCheckpoint", "MoepackModel", "MoepackFixedPoint"],
                resources: [.copy("Profiles")], swiftSettings: unoptimizedInRelease),
        // moepack's own integer kernels of the fixed-point emulation (portable C, AVX2, AVX-512;
        // chosen per process at run time), in C because Swift has no per-function target attributes.
        .target(name: "CMoepackKernels"),
        // Stage 5: inference from the packed image (float path, fixed-point emulation), frames.
        .target(name: "MoepackInference",
                dependencies: ["MoepackCore", "MoepackModel", "MoepackFixedPoint", "MoepackPacking",
                               "COpenBLAS", "CPNG", "CZlib", "MoepackCheckpoint", "CMoepackKernels"]),
        // Task decoders on the backbone output (BatchNorm folded, convolutions on OpenBLAS) and their PNG renderings.
        .target(name: "MoepackHeads",
                dependencies: ["MoepackCore", "MoepackModel", "MoepackCheckpoint", "MoepackPacking", "MoepackInference",
                               "COpenBLAS", "CPNG"]),
        // Stage 6: comparison metrics and reports.
        .target(name: "MoepackVerify",
                dependencies: ["MoepackCore", "MoepackInference", "MoepackModel", "MoepackPacking", "MoepackHeads"],
                swiftSettings: unoptimizedInRelease),
        // Stage 7: the board: host programs generated beside the image, and a simulated board.
        .target(name: "MoepackBoard",
                dependencies: ["MoepackCore", "MoepackFixedPoint", "MoepackModel", "MoepackPacking", "MoepackInference"],
                resources: [.copy("Templates")], swiftSettings: unoptimizedInRelease),
        // Thin CLI.
        .executableTarget(name: "moepack",
                          dependencies: ["MoepackCore", "MoepackCheckpoint", "MoepackModel",
                                         "MoepackFixedPoint", "MoepackPacking", "MoepackInference",
                                         "MoepackVerify", "MoepackBoard", "MoepackHeads",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: unoptimizedInRelease),

        .testTarget(name: "CheckpointTests", dependencies: ["MoepackCheckpoint", "MoepackCore", "MoepackModel"]),
        // Seeded generator shared by the test targets.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "FixedPointTests", dependencies: ["MoepackFixedPoint", "TestSupport"]),
        .testTarget(name: "ModelTests", dependencies: ["MoepackModel", "MoepackCheckpoint"]),
        .testTarget(name: "PackingTests", dependencies: ["MoepackPacking", "MoepackModel", "MoepackCheckpoint", "MoepackFixedPoint", "TestSupport", "MoepackCore"]),
        .testTarget(name: "InferenceTests", dependencies: ["MoepackInference", "CMoepackKernels", "MoepackPacking", "MoepackModel", "MoepackCheckpoint", "MoepackFixedPoint", "TestSupport"]),
        .testTarget(name: "BoardTests", dependencies: ["MoepackBoard", "MoepackInference", "MoepackPacking", "MoepackCore", "TestSupport"],
                    exclude: ["FakePYNQ"]),
        .testTarget(name: "HeadsTests", dependencies: ["MoepackHeads", "MoepackModel", "MoepackCheckpoint", "MoepackCore", "TestSupport"]),
        .testTarget(name: "VerifyTests", dependencies: ["MoepackVerify", "MoepackInference", "MoepackPacking", "MoepackModel", "MoepackCheckpoint", "MoepackHeads", "TestSupport"]),
    ]
)
