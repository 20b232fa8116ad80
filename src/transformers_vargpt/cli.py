"""The `vargpt` command: draw an image (`generate`), answer a question about one (`ask`), or talk about images
(`chat`) with a VARGPT model, by default the small one bundled with the package.

    vargpt generate "Draw a red circle on a blue background." -o circle.png --seed 0
    vargpt ask circle.png "What shape is in the image?"
    vargpt chat --image circle.png

Every subcommand takes `--model` (a directory or a Hub id), `--adapter` (PEFT LoRA adapters trained on that model,
e.g. by `vargpt-train --lora`), `--device` and `--dtype`. User errors (a missing or
unreadable image, an empty prompt, a model that is not there, an output that cannot be written) end with one line on
stderr and exit status 1; argparse reports unknown options and values with status 2.

(Training: `vargpt-train`, in `transformers_vargpt.training.cli`.)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from PIL import Image

from .chat import CHAT_COMMANDS, ChatError, VargptChat, run_chat_loop
from .processing_vargpt import load_rgb_image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A Hub id is `name` or `owner/name`; anything else that is not on disk is a directory that does not exist.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class CliError(Exception):
    """A user error: reported as one line on stderr, exit status 1."""


def one_line(error: BaseException) -> str:
    """An exception's message on a single line."""
    return " ".join(str(error).split()) or type(error).__name__


# ---- the model -------------------------------------------------------------------------------------------------
def resolve_model(model: str | None) -> str:
    """`--model`, or the model bundled with the package (`transformers_vargpt.BUNDLED_MODEL`)."""
    if model is not None:
        return model
    import transformers_vargpt

    bundled = getattr(transformers_vargpt, "BUNDLED_MODEL", None)
    if bundled is None or not os.path.isfile(os.path.join(bundled, "config.json")):
        raise CliError(
            "this installation of transformers-vargpt has no trained bundled model (build it with `make bundled-model`);"
            " pass --model DIR_OR_HUB_ID"
        )
    return str(bundled)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {name}: MPS is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_pipeline(args: argparse.Namespace):
    """The [`VargptPipeline`] (model and processor) that `--model`, `--device` and `--dtype` name."""
    name = resolve_model(args.model)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if not os.path.exists(name):
        if not HUB_ID.match(name):
            raise CliError(f"model directory {name!r} does not exist")
        if is_offline_mode() and not _in_hub_cache(name):
            raise CliError(
                f"{name!r} is neither a local directory nor a Hub model in the local cache (Hub access is off)"
            )
    from .pipeline_vargpt import VargptPipeline

    adapter = getattr(args, "adapter", None)
    if adapter is not None and not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise CliError(f"--adapter {adapter!r}: not a directory with PEFT adapters (no adapter_config.json in it)")
    try:
        pipe = VargptPipeline.from_pretrained(name, dtype=dtype)
    except Exception as error:  # missing files, offline without a cached copy, not a VARGPT model, ...
        raise CliError(f"cannot load the model {name!r}: {one_line(error)}") from error
    if adapter is not None:
        pipe = with_adapter(pipe, adapter)
    return pipe.to(device)


def with_adapter(pipe, adapter: str):
    """`pipe` with the PEFT adapters in `adapter` merged into its model (inference then costs nothing extra), and
    the processor saved beside the adapters, if any (a fine-tune that added words to the tokenizer saves it there)."""
    try:
        from peft import PeftModel
    except ImportError as error:
        raise CliError("--adapter needs the peft package (pip install 'transformers-vargpt[train]')") from error
    from .pipeline_vargpt import VargptPipeline

    try:
        adapted = PeftModel.from_pretrained(pipe.model, adapter)
    except Exception as error:  # adapters of another architecture or size, unreadable weights, ...
        raise CliError(f"cannot apply the adapters in {adapter!r} to this model: {one_line(error)}") from error
    processor = pipe.processor
    if os.path.isfile(os.path.join(adapter, "tokenizer_config.json")):  # adapters that taught new words ship them
        from .processing_vargpt import VargptProcessor

        processor = VargptProcessor.from_pretrained(adapter)
    return VargptPipeline(model=adapted.merge_and_unload().eval(), processor=processor)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hub cache holds `repo_id` as a model (`config.json`) or a pipeline (`model_index.json`)."""
    return any(
        isinstance(try_to_load_from_cache(repo_id, filename), str) for filename in ("config.json", "model_index.json")
    )


# ---- inputs and outputs ---------------------------------------------------------------------------------------
def require_text(text: str, what: str) -> str:
    if not text.strip():
        raise CliError(f"the {what} is empty")
    return text


def require_guidance_for_negative_prompt(guidance_scale: float) -> None:
    if guidance_scale <= 1:
        raise CliError("--negative-prompt steers classifier-free guidance: it needs --guidance-scale above 1 "
                       f"(the guidance scale here is {guidance_scale:g})")


def read_image(path: str) -> Image.Image:
    try:
        return load_rgb_image(path)
    except (ValueError, TypeError) as error:
        raise CliError(one_line(error)) from error


def output_paths(output: str, count: int) -> list[Path]:
    """Where `generate` writes: `-o` itself for one image; `STEM-0.EXT`, `STEM-1.EXT`, ... beside it for several."""
    path = Path(output)
    if path.is_dir():
        raise CliError(f"{output!r} is a directory; -o takes an image file name")
    Image.init()  # registers every format PIL can write
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise CliError(f"cannot tell an image format from {output!r}; end it with .png, .jpg, .webp, ...")
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"cannot write {output!r}: directory {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise CliError(f"cannot write {output!r}: directory {str(folder)!r} is not writable")
    if count == 1:
        return [path]
    return [folder / f"{path.stem}-{index}{path.suffix}" for index in range(count)]


# ---- subcommands -----------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> None:
    prompt = require_text(args.prompt, "prompt")
    if args.negative_prompt is not None:
        require_text(args.negative_prompt, "negative prompt")
        if args.guidance_scale is not None:
            require_guidance_for_negative_prompt(args.guidance_scale)
    paths = output_paths(args.output, args.num_images)
    pipe = load_pipeline(args)
    # only what the user gave: the rest comes from the model's saved generation config
    sampling = {name: getattr(args, name) for name in ("guidance_scale", "top_k", "top_p", "temperature")}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    if args.negative_prompt is not None:
        require_guidance_for_negative_prompt(pipe.model.image_generation_config(**sampling).guidance_scale)
        sampling["negative_prompt"] = args.negative_prompt
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=pipe.model.device).manual_seed(args.seed)
    images = pipe(prompt, num_images_per_prompt=args.num_images, generator=generator, **sampling).images
    for image, path in zip(images, paths):
        try:
            image.save(path)
        except OSError as error:
            raise CliError(f"cannot write {str(path)!r}: {one_line(error)}") from error
        print(path)


def run_ask(args: argparse.Namespace) -> None:
    image = read_image(args.image)
    question = require_text(args.question, "question")
    pipe = load_pipeline(args)
    chat = VargptChat(pipe.model, pipe.processor, max_new_tokens=args.max_new_tokens)
    chat.add_image(image)
    print(chat.send(question))


def run_chat(args: argparse.Namespace) -> None:
    image = read_image(args.image) if args.image is not None else None
    pipe = load_pipeline(args)
    chat = VargptChat(pipe.model, pipe.processor, max_new_tokens=args.max_new_tokens)
    if image is not None:
        chat.add_image(image)
    run_chat_loop(chat, sys.stdin, sys.stdout, sys.stderr, interactive=sys.stdin.isatty())


# ---- argument parsing ------------------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], check: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse `type` that parses with `kind` and rejects values failing `check` ("must be `requirement`")."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {requirement}")
        return value

    return parse


positive_int = _number(int, lambda value: value >= 1, "at least 1")
non_negative_int = _number(int, lambda value: value >= 0, "0 or more")
probability = _number(float, lambda value: 0 < value <= 1, "in (0, 1]")
finite_float = _number(float, math.isfinite, "finite")
positive_float = _number(float, lambda value: math.isfinite(value) and value > 0, "a finite number > 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vargpt",
        description="Draw images and answer questions about them with VARGPT (by default the small model bundled "
        "with this package; nothing is downloaded unless --model names a Hub repository not in the cache).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{generate,ask,chat}")
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--model", help="model directory or Hub id (default: the bundled model)")
    shared.add_argument("--adapter", help="directory of PEFT LoRA adapters to apply to the model (adapter_config.json)")
    shared.add_argument("--device", default="auto", help="auto (default: CUDA if present, else CPU), cpu, cuda, ...")
    shared.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto (default): bfloat16 on CUDA, else float32"
    )

    generate = commands.add_parser(
        "generate",
        parents=[shared],
        help="draw an image from a prompt",
        description="Draw images from a prompt (a progress bar counts the scales). Writes only the -o file, or, "
        "with --num-images N > 1, STEM-0.EXT ... STEM-{N-1}.EXT next to it (-o out.png: out-0.png, out-1.png, ...). "
        "Sampling options not given come from the model's saved generation config.",
    )
    generate.add_argument("prompt", help='what to draw, e.g. "Draw a red circle on a blue background."')
    generate.add_argument("-o", "--output", required=True, help="image file to write (.png, .jpg, ...)")
    generate.add_argument("--seed", type=int, help="seed for reproducible sampling (default: random)")
    generate.add_argument("--guidance-scale", type=finite_float, help="classifier-free guidance; <= 1 disables it")
    generate.add_argument("--top-k", type=non_negative_int, help="sample codes among the k likeliest (0: all)")
    generate.add_argument("--top-p", type=probability, help="nucleus sampling of codes (1: off)")
    generate.add_argument("--temperature", type=positive_float, help="divides the code logits before sampling")
    generate.add_argument("--negative-prompt", help="what guidance steers away from (default: the model's saved "
                          "negative prompt, else the prompt itself)")
    generate.add_argument("--num-images", type=positive_int, default=1, help="how many images (default 1)")
    generate.set_defaults(run=run_generate)

    ask = commands.add_parser(
        "ask",
        parents=[shared],
        help="answer a question about an image",
        description="Answer a question about an image; prints the answer only.",
    )
    ask.add_argument("image", help="image file")
    ask.add_argument("question", help='e.g. "What shape is in the image?"')
    ask.add_argument("--max-new-tokens", type=positive_int, help="answer length limit (default: the model's, or 256)")
    ask.set_defaults(run=run_ask)

    chat = commands.add_parser(
        "chat",
        parents=[shared],
        help="talk about images, interactively",
        description="Talk with the model, one message per line on standard input (a terminal or a pipe); replies "
        "stream to standard output as they are generated and the conversation is kept until /reset.",
        epilog=f"Commands in the chat: {CHAT_COMMANDS} (or end of input).",
    )
    chat.add_argument("--image", help="an image to talk about (shown with the first message)")
    chat.add_argument("--max-new-tokens", type=positive_int, help="reply length limit (default: the model's, or 256)")
    chat.set_defaults(run=run_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`vargpt`: returns the exit status (0, or 1 after a one-line error on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CliError, ChatError) as error:
        print(f"vargpt: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a failure inside the model or the libraries: still one line, never a traceback
        print(f"vargpt: error: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
