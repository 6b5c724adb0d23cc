"""``python -m fnet.models describe <name>``: print where the blocks, MLP and down projection of a model are."""

from __future__ import annotations

import json
from typing import Any

from fnet.models.arch import find_blocks, mlp_modules
from fnet.models.discovery import resolve_path
from fnet.models.load import NAMED_MODELS, load_model

__all__ = ["describe", "main"]


# --------------------------------------------------------------------------------------------------------------
# python -m fnet.models describe <name>
# --------------------------------------------------------------------------------------------------------------
def describe(name: str, **load_kwargs: Any) -> dict[str, Any]:
    """What fnet found for a model: paths, widths, layout (see :class:`fnet.models.discovery.ArchSpec`)."""
    lm = load_model(name, **load_kwargs)
    blocks = find_blocks(lm.model, lm.arch)
    mlp = mlp_modules(lm.model, lm.arch)[0]
    out = {
        "name": name,
        "source": lm.source,
        **lm.arch.describe(),
        "block_class": type(blocks[0]).__name__,
        "mlp_class": type(mlp).__name__,
        "layout": "[seq, batch, width]" if lm.arch.seq_first else "[batch, seq, width]",
        "signals": {"mlp_out": lm.arch.d_model, "mlp_act": None if lm.arch.moe else lm.arch.d_mlp},
    }
    if not lm.arch.moe:
        out["down_proj_class"] = type(resolve_path(mlp, lm.arch.down_proj)).__name__
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fnet.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("describe", help="print where the blocks, MLP and down projection of a model are")
    cmd.add_argument("name", help=f"{sorted(NAMED_MODELS)}, a local folder, a .gguf file or a hub name")
    for flag in ("blocks", "mlp", "down_proj"):
        cmd.add_argument(f"--{flag}", default=None, help=f"override the discovered {flag} path")
    cmd.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    info = describe(
        args.name, blocks=args.blocks, mlp=args.mlp, down_proj=args.down_proj, trust_remote_code=args.trust_remote_code
    )
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
