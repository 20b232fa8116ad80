"""`python -m transformers_vargpt.eval ARGS`: lmms-eval's evaluation command line with this package's tasks included.

The arguments are lmms-eval's (`lmms-eval --help`); `--include_path` gains `TASKS_DIR`, next to a path the user
gives. Example (offline, the bundled model):

    python -m transformers_vargpt.eval --model vargpt --tasks vargpt_shapes_qa
"""

from __future__ import annotations

import sys

from . import TASKS_DIR


def main(argv: list[str] | None = None) -> None:
    try:
        from lmms_eval.__main__ import cli_evaluate, parse_eval_args
    except ImportError as error:
        raise SystemExit(f'lmms-eval is not installed: pip install "transformers-vargpt[eval]" ({error})') from error
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:  # `lmms-eval eval --model ...` spelling
        argv = argv[1:]
    # lmms-eval parses sys.argv itself; its TaskManager accepts a list of task folders where the flag takes one
    sys.argv = [f"{sys.executable} -m transformers_vargpt.eval", *argv]
    _, args = parse_eval_args()
    args.include_path = [path for path in (args.include_path, str(TASKS_DIR)) if path]
    cli_evaluate(args)


if __name__ == "__main__":
    main()
