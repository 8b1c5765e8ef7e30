import PackagePlugin

/// Embeds the interpreter drivers (Drivers/*.py) in SandpitEngine as Swift
/// string constants at build time: the driver stays a Python file, linted and
/// unit-tested as Python, and the binary stays self-contained.
@main
struct EmbedDrivers: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let tool = try context.tool(named: "embed-text")
        let drivers = context.package.directoryURL.appending(path: "Drivers")
        let embedded = [("python_driver.py", "ContextDrivers", "python")]
        return embedded.map { file, type, name in
            let input = drivers.appending(path: file)
            let output = context.pluginWorkDirectoryURL.appending(path: "\(type)+\(name).swift")
            return .buildCommand(displayName: "Embedding \(file)", executable: tool.url,
                                 arguments: [input.path(), output.path(), type, name],
                                 inputFiles: [input], outputFiles: [output])
        }
    }
}
