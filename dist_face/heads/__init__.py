"""Class-center heads: margins, the sharded classifier and its arithmetic."""
