"""The class-center head sharded over ranks, its arithmetic and update."""
