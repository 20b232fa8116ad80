"""The Gradio Space (spaces/vargpt/app.py), driven from outside as a user would: the app runs in its own process on a
free local port with the tiny random model; `gradio_client` calls the named endpoints (also concurrently and with
malformed requests) and a headless Chromium (Debian's, driven by Playwright) uses the Chat and Draw tabs.

The tiny model's weights are random, so the tests check structure (streamed non-empty text, images of the right size,
errors that name the problem), never content. Browser screenshots go to the test's tmp_path, or to the folder named by
VARGPT_SPACE_SCREENSHOTS when it is set (how spaces/vargpt/screenshot.png was taken).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need the gradio extra: pip install -e '.[gradio,test]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from transformers_vargpt.tiny_models import build_tiny_vargpt  # noqa: E402

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces" / "vargpt"
EXAMPLE_IMAGE = SPACE_DIR / "examples" / "red_circle.png"
TINY_IMAGE_SIDE = 64  # image_gen_size of the tiny model
TINY_NUM_SCALES = 4
STARTUP_TIMEOUT_S = 240  # importing torch + transformers + gradio is slow on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    """URL of the app started as the README says (`python spaces/vargpt/app.py --model DIR`) on the tiny model."""
    root = tmp_path_factory.mktemp("space")
    model_dir = root / "tiny-vargpt"
    model, processor = build_tiny_vargpt(seed=0)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    port = _free_port()
    env = dict(
        os.environ,
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        GRADIO_TEMP_DIR=str(root / "gradio"),  # uploads and outputs stay in the test's folder
        PYTHONUNBUFFERED="1",
    )
    command = [
        sys.executable, str(SPACE_DIR / "app.py"), "--model", str(model_dir), "--host", "127.0.0.1",
        "--port", str(port), "--max-new-tokens", "24", "--concurrency", "2",
    ]  # fmt: skip
    log_path = root / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _responds(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start (exit code {process.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
        assert process.poll() is None, f"the app died during the tests:\n{log_path.read_text()[-3000:]}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(space_url) -> Client:
    return Client(space_url, verbose=False)


def _gallery_images(result) -> list[Image.Image]:
    """The images of a Gallery output as gradio_client returns it: [{"image": path, "caption": ...}, ...]."""
    return [Image.open(item["image"]).convert("RGB") for item in result]


def _check_serving(client: Client) -> None:
    answer = client.predict(handle_file(EXAMPLE_IMAGE), "What color is the shape?", api_name="/ask")
    assert isinstance(answer, str) and answer.strip()
    images = _gallery_images(client.predict("a red circle", 1, 1.0, 10, 0.9, 1, api_name="/generate"))
    assert [image.size for image in images] == [(TINY_IMAGE_SIDE, TINY_IMAGE_SIDE)]


# ---- in process: the conversation the model reads --------------------------------------------------------------
@pytest.fixture(scope="module")
def space_modules():
    """`app` and `vargpt_inference` from spaces/vargpt, imported as the app imports them (from its folder)."""
    pytest.importorskip("gradio", reason="the Space tests need the gradio extra: pip install -e '.[gradio,test]'")
    sys.path.insert(0, str(SPACE_DIR))
    try:
        import app
        import vargpt_inference
    finally:
        sys.path.remove(str(SPACE_DIR))
    return app, vargpt_inference


def test_default_model_is_the_bundled_one_or_a_clear_error(space_modules, monkeypatch, tmp_path):
    app, inference = space_modules
    import transformers_vargpt

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("VARGPT_MODEL", raising=False)
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", None, raising=False)
    with pytest.raises(SystemExit, match="no bundled model. Pass --model"):
        app.main([])  # exits before loading anything
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", str(tmp_path / "missing"))
    with pytest.raises(inference.ModelNotFoundError, match="missing from this installation"):
        inference.resolve_default_model()
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", str(tmp_path))
    assert inference.resolve_default_model() == str(tmp_path)
    monkeypatch.setenv("SPACE_ID", "someone/vargpt")  # what a Hugging Face Space sets
    assert inference.resolve_default_model() == inference.RELEASED_MODEL


def test_multi_turn_history_becomes_model_turns(space_modules):
    app, inference = space_modules
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": str(EXAMPLE_IMAGE)}}]},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]
    turns = app.conversation_turns({"text": " And its color? ", "files": []}, history, inference.Limits())
    assert [(turn.role, turn.text, len(turn.images)) for turn in turns] == [
        ("user", "What is this?", 1), ("assistant", "A red circle.", 0), ("user", "And its color?", 0),
    ]  # fmt: skip
    assert turns[0].images[0].mode == "RGB"


def test_long_conversations_drop_their_oldest_exchanges(space_modules):
    _, inference = space_modules
    model, processor = build_tiny_vargpt(seed=0)
    context = model.config.text_config.max_position_embeddings
    image = Image.open(EXAMPLE_IMAGE)
    question = inference.Turn("user", "what color is it ?", [image])
    conversation = [question, inference.Turn("assistant", "red ."), inference.Turn("user", "and the shape ?")]

    def prompt_length(max_new_tokens: int, turns) -> int:
        space = inference.VargptSpaceModel(
            _pipeline(model, processor), inference.Limits(max_new_tokens=max_new_tokens)
        )
        return space.chat_inputs(turns)["input_ids"].shape[1]

    whole = prompt_length(16, conversation)
    last_only = prompt_length(16, conversation[-1:])
    assert last_only < whole
    # an answer budget that leaves room for the last question only: the first exchange (with its image) is dropped
    assert prompt_length(context - last_only, conversation) == last_only
    with pytest.raises(inference.InputError, match="tokens"):
        prompt_length(context - last_only + 1, conversation)


def _pipeline(model, processor):
    from transformers_vargpt import VargptPipeline

    return VargptPipeline(model=model, processor=processor)


# ---- gradio_client: the named endpoints ------------------------------------------------------------------------
def test_named_endpoints_are_documented(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/ask"]["parameters"]] == ["image", "question"]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [
        "prompt", "seed", "guidance_scale", "top_k", "top_p", "num_images",
    ]  # fmt: skip


def test_ask_answers_a_question_about_an_image(client):
    answer = client.predict(handle_file(EXAMPLE_IMAGE), "What color is the shape?", api_name="/ask")
    assert isinstance(answer, str) and answer.strip()


def test_generate_draws_reproducible_images(client):
    first = _gallery_images(client.predict("a blue square", 7, 1.0, 20, 0.9, 2, api_name="/generate"))
    again = _gallery_images(client.predict("a blue square", 7, 1.0, 20, 0.9, 2, api_name="/generate"))
    assert [image.size for image in first] == [(TINY_IMAGE_SIDE, TINY_IMAGE_SIDE)] * 2
    for image, repeat in zip(first, again):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(repeat))  # PNG is lossless: same seed, same pixels


def test_chat_streams_the_answer(client):
    message = {"text": "What is in this picture?", "files": [handle_file(EXAMPLE_IMAGE)]}
    job = client.submit(message, api_name="/chat")
    final = job.result(timeout=120)
    updates = [update for update in job.outputs() if isinstance(update, str)]
    assert final.strip() and updates[-1] == final
    assert len(updates) >= 2, f"the answer came in one piece: {updates}"
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))  # it grows token by token


def test_concurrent_requests_are_all_answered(client):
    def request(index: int):
        if index % 2:
            return client.predict(handle_file(EXAMPLE_IMAGE), f"question {index}?", api_name="/ask")
        return client.predict(f"a red circle {index}", index, 1.0, 10, 0.9, 1, api_name="/generate")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(request, range(8)))
    for index, result in enumerate(results):
        if index % 2:
            assert isinstance(result, str) and result.strip()
        else:
            assert [image.size for image in _gallery_images(result)] == [(TINY_IMAGE_SIDE, TINY_IMAGE_SIDE)]


# ---- malformed requests get errors that say why, and the app keeps serving -------------------------------------
@pytest.fixture(scope="module")
def huge_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "huge.png"
    Image.new("RGB", (5000, 4000), "white").save(path)  # 20 MP, a few kB of PNG: refused by pixels, not bytes
    return path


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "notes.png"
    path.write_text("this is not a PNG")
    return path


@pytest.fixture(scope="module")
def oversized_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "big.png"
    path.write_bytes(b"\0" * (11 * 1024 * 1024))  # over the 10 MB upload limit
    return path


ASK_ERRORS = [
    ("no image", None, "What is it?", "upload an image"),
    ("empty question", "example", "   ", "type a question"),
    ("huge image", "huge", "What is it?", "MP"),
    ("not an image", "not_an_image", "What is it?", "not an image"),
    ("question too long", "example", "why " * 600, "characters"),
]


@pytest.mark.parametrize("image, question, expected", [case[1:] for case in ASK_ERRORS], ids=[c[0] for c in ASK_ERRORS])
def test_malformed_ask_is_refused(client, huge_image, not_an_image, image, question, expected):
    paths = {"example": EXAMPLE_IMAGE, "huge": huge_image, "not_an_image": not_an_image}
    with pytest.raises(AppError, match=expected):
        client.predict(handle_file(paths[image]) if image else None, question, api_name="/ask")


def test_oversized_upload_is_refused(client, oversized_file):
    # gradio_client checks the app's max_file_size before uploading; the server refuses larger uploads too
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(oversized_file), "What is it?", api_name="/ask")


GENERATE_ERRORS = [
    ("empty prompt", ("  ", 0, 1.0, 10, 0.9, 1), "describe the picture"),
    ("prompt too long", ("draw " * 200, 0, 1.0, 10, 0.9, 1), "characters"),
    ("negative seed", ("a circle", -1, 1.0, 10, 0.9, 1), "minimum"),
    ("too many images", ("a circle", 0, 1.0, 10, 0.9, 5), "maximum"),
    ("guidance too high", ("a circle", 0, 11.0, 10, 0.9, 1), "maximum"),
    ("top-k above the codebook", ("a circle", 0, 1.0, 65, 0.9, 1), "maximum"),
    ("top-p of zero", ("a circle", 0, 1.0, 10, 0.0, 1), "minimum"),
]


@pytest.mark.parametrize("arguments, expected", [c[1:] for c in GENERATE_ERRORS], ids=[c[0] for c in GENERATE_ERRORS])
def test_malformed_generate_is_refused(client, arguments, expected):
    with pytest.raises(AppError, match=expected):
        client.predict(*arguments, api_name="/generate")


def test_app_still_serves_after_refused_requests(client, huge_image):
    with pytest.raises(AppError):
        client.predict(handle_file(huge_image), "What is it?", api_name="/ask")
    with pytest.raises(AppError):
        client.predict("", 0, 1.0, 10, 0.9, 1, api_name="/generate")
    _check_serving(client)


# ---- a real browser --------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    """Debian's Chromium, installed with apt when it is missing and apt can install it (as root)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser_page(space_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (test extra)")
    executable = _chromium()
    if executable is None:
        pytest.skip("Debian's chromium is not installed and could not be installed with apt-get (needs root + apt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        # nothing but the app: a request elsewhere fails at once instead of reaching the network
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            (space_url.rstrip("/"), "data:", "blob:")) else route.abort())  # fmt: skip
        page.goto(space_url, wait_until="domcontentloaded")
        yield page
        browser.close()


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    folder = Path(os.environ.get("VARGPT_SPACE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Records every text an element shows (a MutationObserver sees each streamed update, however fast it comes).
RECORD_TEXTS = """([selector, key]) => {
    window[key] = [];
    const record = () => {
        const nodes = document.querySelectorAll(selector);
        const text = nodes.length ? nodes[nodes.length - 1].innerText.trim() : "";
        if (text && window[key][window[key].length - 1] !== text) window[key].push(text);
    };
    new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_browser_chat_and_draw(browser_page, screenshot_dir):
    page = browser_page
    page.wait_for_selector("#chat-input textarea")
    page.screenshot(path=screenshot_dir / "space-start.png")

    # Chat: upload an image, ask, watch the answer stream in
    page.evaluate(RECORD_TEXTS, ["#chatbot [data-testid=bot]", "answers"])
    page.locator("#chat-input input[type=file]").set_input_files(EXAMPLE_IMAGE)
    page.wait_for_selector("#chat-input img")  # the upload's thumbnail
    page.locator("#chat-input textarea").fill("What shape is in the image?")
    page.locator("#chat-input [data-testid=submit-button]").click()
    page.wait_for_selector("#chatbot [data-testid=user] img")  # the question shows with its image
    # finished: an answer is shown and the input box, disabled while the answer streams, is enabled again
    page.wait_for_function("() => window.answers.length > 0 && !document.querySelector('#chat-input textarea').disabled")
    answers = page.evaluate("() => window.answers")
    assert answers and answers[-1], "no answer appeared"
    assert len(answers) >= 2, f"the answer did not stream: {answers}"
    page.screenshot(path=screenshot_dir / "space-chat.png")

    # Draw: the preview goes through the scales, then the gallery shows the image
    page.get_by_role("tab", name="Draw").click()
    page.evaluate(RECORD_TEXTS, ["#draw-preview [data-testid=block-label]", "scales"])
    page.locator("#draw-prompt textarea").fill("Draw a red circle on a white background.")
    page.locator("#draw-button").click()
    page.wait_for_selector("#draw-gallery img")
    scales = [label for label in page.evaluate("() => window.scales") if label.startswith("Scale")]
    assert scales[-1] == f"Scale {TINY_NUM_SCALES} of {TINY_NUM_SCALES}"
    assert len(scales) >= 2, f"the picture did not sharpen scale by scale: {scales}"
    assert page.locator("#draw-preview img").count() == 1
    page.screenshot(path=screenshot_dir / "space-draw.png")
    assert (screenshot_dir / "space-draw.png").stat().st_size > 0


def test_the_space_model_prepares_drawing_before_requests_share_it(space_modules, monkeypatch):
    from torch import nn

    from transformers_vargpt import cpu_matmul
    from transformers_vargpt.cpu_matmul import is_column_major

    _, inference = space_modules
    monkeypatch.setattr(cpu_matmul, "column_major_drawing_weights", True)
    model, processor = build_tiny_vargpt(seed=0)
    inference.VargptSpaceModel(_pipeline(model, processor), max_concurrent=2)
    # re-stored at start-up, not by the first drawing while another request may be answering with the same LLM
    per_scale = [m for part in model.layers_run_per_scale() for m in part.modules() if type(m) is nn.Linear]
    assert per_scale and all(is_column_major(m.weight) for m in per_scale)

