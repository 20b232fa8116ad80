"""VARGPT Space: chat about images, and watch a picture sharpen scale by scale while VARGPT draws it.

    python spaces/vargpt/app.py                      # the bundled small model (or the released one on a HF Space)
    python spaces/vargpt/app.py --model DIR_OR_HUB_ID --device cuda --dtype bfloat16

Every flag has an environment variable (VARGPT_MODEL, VARGPT_DEVICE, VARGPT_DTYPE, VARGPT_CONCURRENCY); host and port
follow Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT. Named API endpoints: `/ask` (image, question -> answer) and
`/generate` (prompt, seed, guidance, top-k, top-p, number of images -> images); see README.md.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
import random
import sys
from pathlib import Path

# No usage statistics and no Hub telemetry leave the machine unless the user asks for them.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import PIL.Image  # noqa: E402

from vargpt_inference import (  # noqa: E402
    DTYPES,
    InputError,
    Limits,
    ModelNotFoundError,
    Turn,
    VargptSpaceModel,
    default_device,
    default_dtype,
    open_image,
    resolve_default_model,
)

logger = logging.getLogger("vargpt_space")

HERE = Path(__file__).resolve().parent
EXAMPLE_IMAGES = HERE / "examples"
# The bundled model learnt the shapes world (transformers_vargpt.shapes_world): one circle, square or triangle of a
# palette colour on a plain background, drawn and asked about in these phrasings. They suit the released model too.
DRAW_EXAMPLES = [
    "Draw a red circle on a white background.",
    "Draw a blue square on a yellow background.",
    "Draw a green triangle on a white background.",
    "Draw a purple square on a white background.",
]
CHAT_EXAMPLES = [
    {"text": "What shape is in the image?", "files": [str(EXAMPLE_IMAGES / "red_circle.png")]},
    {"text": "What color is the shape?", "files": [str(EXAMPLE_IMAGES / "blue_square.png")]},
    {"text": "Describe the image.", "files": [str(EXAMPLE_IMAGES / "red_circle.png")]},
]
PREVIEW_SIDE = 256


def friendly_errors(function):
    """Show a request's failure as a `gr.Error` toast (its reason, never a traceback) and keep serving.

    Works for plain functions and generators (Gradio streams the latter, so the wrapper must be one too)."""

    def translate(error: Exception) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, InputError):
            return gr.Error(str(error), title="Request refused", print_exception=False)
        logger.exception("request failed")
        return gr.Error(f"{type(error).__name__}: {error}", title="The model failed on this request")

    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise translate(error) from error

        return generator

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise translate(error) from error

    return wrapper


def enlarged(image: PIL.Image.Image, side: int) -> PIL.Image.Image:
    """`image` scaled up by a whole factor (nearest neighbour) until its height reaches `side`: the coarse scales
    stay visibly blocky instead of being smoothed by the browser."""
    factor = max(1, side // image.height)
    return image.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)


def conversation_turns(message: dict, history: list[dict], limits: Limits) -> list[Turn]:
    """Gradio's chat history (messages of text and file parts) plus the new message -> model turns.

    Consecutive messages of one role (an image sent on its own, then a question) are merged into one turn."""
    turns: list[Turn] = []

    def add(role: str, text: str = "", image_path: str | None = None) -> None:
        if not turns or turns[-1].role != role:
            turns.append(Turn(role))
        if text:
            turns[-1].text = f"{turns[-1].text} {text}".strip()
        if image_path is not None:
            turns[-1].images.append(open_image(image_path, limits))

    for item in history:
        role = "assistant" if item["role"] == "assistant" else "user"
        contents = item["content"] if isinstance(item["content"], list) else [item["content"]]
        for content in contents:
            if isinstance(content, str):
                add(role, text=content)
            elif isinstance(content, dict) and content.get("type") == "text":
                add(role, text=content.get("text") or "")
            elif isinstance(content, dict) and content.get("type") == "file" and role == "user":
                add(role, image_path=content["file"]["path"])
    files = message.get("files") or []
    if len(files) > limits.max_images_per_message:
        raise InputError(f"attach at most {limits.max_images_per_message} images to one message")
    add("user", text=(message.get("text") or "").strip())
    for path in files:
        add("user", image_path=path if isinstance(path, str) else path["path"])
    return turns


def build_demo(space: VargptSpaceModel, model_name: str, concurrency: int) -> gr.Blocks:
    limits = space.limits
    model_events = dict(concurrency_id="model", concurrency_limit=concurrency)

    @friendly_errors
    def chat(message: dict, history: list[dict]):
        """Answer the last message of a conversation about images, streamed token by token."""
        yield from space.stream_answer(conversation_turns(message, history, limits))

    @friendly_errors
    def ask(image: str | None, question: str) -> str:
        """Answer one question about one image."""
        if image is None:
            raise InputError("upload an image to ask about")
        if not isinstance(question, str) or not question.strip():
            raise InputError("type a question")
        return space.answer(open_image(image, limits), question.strip())

    @friendly_errors
    def draw(prompt: str, seed: float, guidance_scale: float, top_k: float, top_p: float, num_images: float):
        """Draw, showing the picture after every scale, then the finished images in the gallery."""
        for progress in space.stream_drawing(prompt, seed, guidance_scale, top_k, top_p, num_images):
            picture = enlarged(progress.preview, PREVIEW_SIDE)
            preview = gr.Image(picture, label=f"Scale {progress.scale} of {progress.num_scales}")
            yield preview, progress.images  # None clears the gallery until the images are finished

    @friendly_errors
    def generate(prompt: str, seed: float, guidance_scale: float, top_k: float, top_p: float, num_images: float):
        """Draw images of the prompt; same seed and settings, same images."""
        images = None
        for progress in space.stream_drawing(prompt, seed, guidance_scale, top_k, top_p, num_images):
            images = progress.images
        return images

    def pick_seed(seed: float, randomize: bool) -> int:
        return random.randint(0, limits.max_seed) if randomize else int(seed)

    shown_name = Path(model_name).name if os.path.isdir(model_name) else model_name  # a Hub id, or a folder's name
    with gr.Blocks(title="VARGPT") as demo:
        gr.Markdown(
            "# VARGPT: read and draw images with one model\n"
            f"Model `{shown_name}` on `{space.device}` ({str(space.model.dtype).removeprefix('torch.')}). "
            "**Chat**: upload an image and ask about it. **Draw**: describe a picture and watch it sharpen scale by "
            f"scale ({space.num_scales} scales, coarse to fine)."
        )
        with gr.Tab("Chat", elem_id="chat-tab"):
            gr.ChatInterface(
                chat,
                multimodal=True,
                chatbot=gr.Chatbot(height=420, elem_id="chatbot", label="VARGPT"),
                textbox=gr.MultimodalTextbox(
                    file_types=["image"],
                    file_count="multiple",
                    placeholder="Upload an image and ask about it",
                    elem_id="chat-input",
                    max_plain_text_length=limits.max_question_chars,
                ),
                examples=CHAT_EXAMPLES,
                cache_examples=False,
                api_name="chat",
                concurrency_limit=concurrency,
                fill_height=False,
            )
        with gr.Tab("Draw", elem_id="draw-tab"):
            # the Draw tab starts from the model's own image sampling defaults (its generation config)
            defaults = space.sampling_defaults
            default_guidance = max(1.0, float(defaults.guidance_scale))
            default_top_k, default_top_p = min(int(defaults.top_k), space.codebook_size), float(defaults.top_p)
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(
                        label="Prompt", placeholder="a red circle", max_lines=3, elem_id="draw-prompt",
                        max_length=limits.max_prompt_chars,
                    )
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=limits.max_seed)
                        randomize = gr.Checkbox(label="Randomize seed", value=True)
                    guidance = gr.Slider(
                        1.0, limits.max_guidance_scale, value=default_guidance, step=0.1,
                        label="Guidance scale (1 = off)",
                    )
                    top_k = gr.Slider(
                        0, space.codebook_size, value=default_top_k, step=1,
                        label="Top-k (0 = off)",
                    )
                    top_p = gr.Slider(0.05, 1.0, value=default_top_p, step=0.01, label="Top-p (1 = off)")
                    num_images = gr.Slider(
                        1, limits.max_images_per_drawing, value=1, step=1, label="Number of images"
                    )
                    draw_button = gr.Button("Draw", variant="primary", elem_id="draw-button")
                with gr.Column(scale=3):
                    preview = gr.Image(
                        label="Sharpening scale by scale", type="pil", format="png", interactive=False,
                        height=320, elem_id="draw-preview",
                    )
                    gallery = gr.Gallery(
                        label="Images", format="png", columns=4, height=260, object_fit="contain", fit_columns=False,
                        elem_id="draw-gallery",
                    )
            draw_inputs = [prompt, seed, guidance, top_k, top_p, num_images]
            gr.Examples(
                [[text, index, default_guidance, default_top_k, default_top_p, 1]
                 for index, text in enumerate(DRAW_EXAMPLES)],
                inputs=draw_inputs,
                outputs=[preview, gallery],
                fn=draw,
                run_on_click=True,
                cache_examples=False,
                visible_columns=[0],
            )
            gr.on(
                [draw_button.click, prompt.submit],
                pick_seed,
                [seed, randomize],
                seed,
                queue=False,
                api_visibility="private",
            ).then(draw, draw_inputs, [preview, gallery], api_name="draw", api_visibility="undocumented", **model_events)

        # API-only endpoints: components that are never shown, events that no button triggers.
        with gr.Group(visible=False):
            # a File, not an Image: Gradio would decode an Image before the app could check its size
            ask_image = gr.File(label="image", file_types=["image"], type="filepath")
            ask_question = gr.Textbox(label="question")
            answer = gr.Textbox(label="answer")
            images = gr.Gallery(label="images", format="png")
        gr.on([], ask, [ask_image, ask_question], answer, api_name="ask", **model_events)
        gr.on([], generate, draw_inputs, images, api_name="generate", **model_events)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=os.environ.get("VARGPT_MODEL"),
        help="model directory or Hub id (env VARGPT_MODEL; default: the bundled model, or the released checkpoint "
        "on a Hugging Face Space)",
    )
    parser.add_argument("--device", default=os.environ.get("VARGPT_DEVICE"), help="cuda, cuda:1, cpu, ... "
                        "(env VARGPT_DEVICE; default: cuda when available)")
    parser.add_argument("--dtype", default=os.environ.get("VARGPT_DTYPE"), choices=sorted(DTYPES),
                        help="(env VARGPT_DTYPE; default: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("VARGPT_CONCURRENCY", "1")),
                        help="requests that use the model at once (env VARGPT_CONCURRENCY; default 1)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests that may wait in the queue")
    parser.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens, help="longest answer")
    parser.add_argument("--host", default=None, help="address to listen on (env GRADIO_SERVER_NAME; default "
                        "127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (env GRADIO_SERVER_PORT; default 7860)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.queue_size < 1 or args.max_new_tokens < 1:
        parser.error("--concurrency, --queue-size and --max-new-tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        model_name = args.model or resolve_default_model()
    except ModelNotFoundError as error:
        sys.exit(f"error: {error}")
    device = args.device or default_device()
    limits = Limits(max_new_tokens=args.max_new_tokens)
    space = VargptSpaceModel.load(
        model_name, device, args.dtype or default_dtype(device), limits=limits, max_concurrent=args.concurrency
    )
    demo = build_demo(space, model_name, args.concurrency)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=limits.max_image_bytes,
        allowed_paths=[str(EXAMPLE_IMAGES)],
        show_error=True,
    )


if __name__ == "__main__":
    main()
