"""tformer: attention and the Transformer family from first principles in PyTorch."""

from tformer.errors import TformerError

__version__ = "0.1.0"
__all__ = ["TformerError", "__version__"]
