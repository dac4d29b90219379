import ArgumentParser
struct Moepack: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "moepack", abstract: "M3ViT checkpoints to Edge-MoE DDR images", version: "0.1.0")
}
Moepack.main()
