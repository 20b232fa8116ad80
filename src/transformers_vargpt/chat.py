"""A conversation with a VARGPT model about images, and the interactive loop of `vargpt chat`.

`VargptChat` keeps the turns as chat messages and renders the whole conversation with the processor's chat template
before every reply, so the model sees what was said and shown before; `run_chat_loop` reads user lines (a terminal
or any stream, so the loop can be driven by a pipe) and streams the replies token by token.
"""

from __future__ import annotations

from typing import Any, TextIO

import PIL.Image
import torch
from transformers import TextStreamer

from .processing_vargpt import load_rgb_image

# Used when neither the caller nor the model's generation_config sets a length.
DEFAULT_MAX_NEW_TOKENS = 256

CHAT_COMMANDS = "/image PATH (show an image with your next message), /reset (forget the conversation), /quit"


class ChatError(ValueError):
    """A turn that cannot be answered (an image that does not load, a conversation longer than the context)."""


class VargptChat:
    """The turns of one conversation with a VARGPT model, and the next reply.

    Args:
        model ([`VargptForConditionalGeneration`]): the model that answers.
        processor ([`VargptProcessor`]): tokenizer, image processor and the chat template that renders the turns.
        max_new_tokens (`int`, *optional*): reply length limit; default: the model's `generation_config`, else 256.
        generation_kwargs (`dict`, *optional*): further `generate` arguments; the model's `generation_config`
            decides everything not given here (greedy unless it says otherwise).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_new_tokens: int | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ):
        self.model = model
        self.processor = processor
        saved_limit = getattr(model.generation_config, "max_new_tokens", None)
        self.max_new_tokens = max_new_tokens or saved_limit or DEFAULT_MAX_NEW_TOKENS
        self.generation_kwargs = dict(generation_kwargs or {})
        self.messages: list[dict[str, Any]] = []
        self.images: list[PIL.Image.Image] = []  # the images of `messages`, in the order of their <image> tokens
        self.pending_images: list[PIL.Image.Image] = []  # shown with the next user message

    @property
    def context_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def add_image(self, image: Any) -> None:
        """Show `image` (a path, PIL image or array) with the next message."""
        try:
            self.pending_images.append(load_rgb_image(image))
        except (ValueError, TypeError) as error:
            raise ChatError(str(error)) from error

    def reset(self) -> None:
        """Forget every turn and every image, shown or pending."""
        self.messages, self.images, self.pending_images = [], [], []

    def prompt(self) -> str:
        """The conversation so far rendered by the chat template, ending with the assistant's turn to speak."""
        return self.processor.apply_chat_template(self.messages, add_generation_prompt=True)

    def send(self, text: str, streamer: TextStreamer | None = None) -> str:
        """Add the user's `text` (with the pending images), generate the reply, remember it and return it.

        A `streamer` receives the reply's tokens as they are generated. If the turn fails, the conversation is left
        as it was before it.
        """
        if not text.strip():
            raise ChatError("the message is empty")
        content = [{"type": "image"} for _ in self.pending_images] + [{"type": "text", "text": text}]
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + self.pending_images
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=images or None, text=prompt, return_tensors="pt").to(self.model.device)
        prompt_length = inputs["input_ids"].shape[1]
        room = self.context_length - prompt_length
        if room <= 0:
            raise ChatError(
                f"the conversation is {prompt_length} tokens, more than the model's context of "
                f"{self.context_length}; start again (/reset in chat)"
            )
        with torch.no_grad():
            output_ids = self.model.generate(
                **inputs,
                max_new_tokens=min(self.max_new_tokens, room),
                streamer=streamer,
                **self.generation_kwargs,
            )
        reply = self.processor.decode(output_ids[0, prompt_length:], skip_special_tokens=True).strip()
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        self.images, self.pending_images = images, []
        return reply


def run_chat_loop(chat: VargptChat, stdin: TextIO, stdout: TextIO, stderr: TextIO, interactive: bool) -> None:
    """Read messages from `stdin` until `/quit` or end of input and stream each reply to `stdout`.

    A line starting with `/` is a command (`CHAT_COMMANDS`); any other non-empty line is a message. Errors of one
    turn (an unreadable image, an over-long conversation) are reported on `stderr` and the loop goes on.
    `interactive` (a terminal) adds prompts and a line of help; piped input gets only the replies, one per line.
    """
    streamer = _Streamer(chat.processor.tokenizer, stdout)
    if interactive:
        print(f"Chat with VARGPT. Commands: {CHAT_COMMANDS}.", file=stderr)
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                break
            elif command == "/reset":
                chat.reset()
                print("(conversation reset)", file=stderr)
            elif command == "/image":
                if not argument.strip():
                    raise ChatError("/image needs a path: /image PATH")
                chat.add_image(argument.strip())
                print(f"(image {argument.strip()} will be shown with your next message)", file=stderr)
            elif command.startswith("/"):
                raise ChatError(f"unknown command {command!r}; commands: {CHAT_COMMANDS}")
            else:
                if interactive:
                    stdout.write("vargpt> ")
                chat.send(line, streamer=streamer)
        except ChatError as error:
            print(f"error: {error}", file=stderr)


class _Streamer(TextStreamer):
    """transformers' `TextStreamer` (prompt and special tokens skipped) writing to a given stream, not `print`'s
    current `sys.stdout`, and ending every reply with a newline."""

    def __init__(self, tokenizer: Any, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


__all__ = ["VargptChat", "ChatError", "run_chat_loop", "CHAT_COMMANDS", "DEFAULT_MAX_NEW_TOKENS"]
