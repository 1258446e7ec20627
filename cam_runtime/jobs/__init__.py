"""Jobs built on the engine that a CLI, a server or a distributed runner can call: explain a folder tree,
evaluate methods on annotated images."""
