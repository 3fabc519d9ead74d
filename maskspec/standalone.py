"""Emit a standalone Python module for one compiled spec, importing only torch.

The module carries maskspec's own runtime — IR evaluation, row-program evaluation, block
classification, input checks and the flex target — flattened from the installed source,
plus the spec's IR as a literal. Its BlockMasks are maskspec's by construction: the same
code over the same IR, not a re-derivation.
"""

from __future__ import annotations

import ast
import inspect
from importlib import import_module

from maskspec import ir, scan

# Dependency order: each module only uses names defined above it.
RUNTIME = ("errors", "caches", "ir", "analysis", "context", "lower", "elements", "separable",
           "rowblocks", "blocks", "assemble", "mask_mod", "inputs", "targets.flex")

API = '''

MASK = {ir_literal}


def make_block_mask(B, H, Q_LEN, KV_LEN, device=None, BLOCK_SIZE=128, *, check_inputs=True,
                    **inputs):
    """The {name} BlockMask: create_block_mask's arguments, minus the mask_mod."""
    bs = block_size_of(BLOCK_SIZE)
    device = torch.device(device if device is not None else "cpu")
    sizes = sizes_of(1 if B is None else B, 1 if H is None else H, Q_LEN, KV_LEN)
    bound = bind_inputs(MASK, sizes, inputs, device, check_inputs)
    return build(BuildContext(MASK, sizes, bound, device, bs))


def make_mask_mod(*, B=None, H=None, Q_LEN=None, KV_LEN=None, device=None, **inputs):
    """The {name} element mask_mod, for create_block_mask or flex_attention (keyword
    arguments, as maskspec's CompiledMask.mask_mod; Q_LEN / KV_LEN where the mask uses them)."""
    for k, v in (("Q_LEN", Q_LEN), ("KV_LEN", KV_LEN)):
        if v is None and k in MASK.sizes_used():
            raise ValueError(f"spec `{name}` uses {{k}}: pass make_mask_mod({{k}}=...)")
    sizes = sizes_of(B or 1, H or 1, Q_LEN or 1, KV_LEN or 1)
    return mask_mod(MASK, sizes, bind_inputs(MASK, sizes, inputs, device))
'''

SCAN = '''
def sorted_values(x):
    """x sorted along the last dim (maskspec.sorting's, by torch alone)."""
    return x.sort(-1).values


def sorted_with_order(x):
    """x sorted along the last dim, and the order (maskspec.sorting's, by torch alone)."""
    return x.sort(-1)


def repeated(values, counts, total):
    """values repeated counts times each (maskspec.sorting's, by torch alone)."""
    return values.repeat_interleave(counts, output_size=total)


cleaned = cleaned_by_torch  # maskspec.scan's, by torch alone
'''


class _Flatten(ast.NodeTransformer):
    """Rewrites ``ir.evaluate`` (a maskspec module attribute) as plain ``evaluate``."""

    def __init__(self, aliases: set[str]) -> None:
        self.aliases = aliases

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            return ast.copy_location(ast.Name(node.attr, node.ctx), node)
        return node


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
        and isinstance(stmt.value.value, str)


def _split(module: str) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """A runtime module's foreign imports and its body with maskspec references flattened."""
    tree = ast.parse(inspect.getsource(import_module(f"maskspec.{module}")))
    imports: list[ast.stmt] = []
    body: list[ast.stmt] = []
    aliases: set[str] = set()
    for i, stmt in enumerate(tree.body):
        if i == 0 and _is_docstring(stmt):
            continue
        if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith("maskspec"):
            if stmt.module == "maskspec":
                aliases |= {a.asname or a.name for a in stmt.names}
            continue
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.append(stmt)
            continue
        body.append(stmt)
    flat = _Flatten(aliases)
    return imports, [flat.visit(s) for s in body]


def _merged_imports(stmts: list[ast.stmt]) -> list[str]:
    """One import line per module, names merged, in a stable order."""
    plain: set[str] = set()
    names: dict[str, set[str]] = {}
    for s in stmts:
        if isinstance(s, ast.Import):
            plain |= {ast.unparse(a) for a in s.names}
        elif isinstance(s, ast.ImportFrom):
            names.setdefault(s.module or "", set()).update(ast.unparse(a) for a in s.names)
    return [f"import {m}" for m in sorted(plain)] + [
        f"from {m} import {', '.join(sorted(n))}" for m, n in sorted(names.items())
    ]


def python_module(mask: ir.MaskIR) -> str:
    """Source of a module with ``make_block_mask`` and ``make_mask_mod`` for this spec."""
    imports: list[ast.stmt] = []
    sections = []
    for module in RUNTIME:
        imps, body = _split(module)
        imports += imps
        sections.append(f"# ---- from maskspec.{module}\n\n" + ast.unparse(ast.Module(body, [])))
    spec_lines = "\n".join(f"#   {line}" for line in mask.source.strip().splitlines())
    header = (
        f'"""Standalone maskspec build of the `{mask.name}` mask (params: '
        f'{dict(mask.params)}).\n\nGenerated by `maskspec compile --emit python`; needs '
        'only torch. Use make_block_mask(B, H, Q_LEN, '
        'KV_LEN, device, BLOCK_SIZE, **inputs)\nand make_mask_mod(B=, H=, Q_LEN=, KV_LEN=, '
        '**inputs), as CompiledMask.block_mask and .mask_mod.\n"""\n\n# The spec:\n'
        + spec_lines + "\n"
    )
    api = API.format(name=mask.name, ir_literal=repr(mask))
    positions = "Pos = Any  # spec source positions: annotations only, none are carried\n"
    return "\n".join([header, "from __future__ import annotations\n",
                      *_merged_imports(imports), "", positions,
                      inspect.getsource(scan.cleaned_by_torch), SCAN, *sections, api])
