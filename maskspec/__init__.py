"""maskspec: a declarative compiler for attention masks.

Write a mask once as a `.mask` spec; get exact flex_attention BlockMasks,
FlashAttention-4 block-sparse tensors, the element mask_mod and a dense
reference — built analytically, in the time and memory of the output.
"""

from maskspec.api import CompiledMask, compile, load, wait_checks
from maskspec.documents import document_ids
from maskspec.errors import MaskSpecError, MaskSpecWarning
from maskspec.trees import tree_ancestors

__all__ = ["CompiledMask", "MaskSpecError", "MaskSpecWarning", "compile", "document_ids", "load",
           "tree_ancestors", "wait_checks"]
__version__ = "0.1.0"
