"""`charrnn serve`: an HTTP API and a web playground for trained models (charrnn/serve/)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated

import typer
from rich.markup import escape

from charrnn.cli.common import DeviceOption, handles_errors, out, warn
from charrnn.errors import CharRNNError, UsageError

INSTALL_HINT = "pip install 'charrnn[serve]'"


@handles_errors
def serve(
    checkpoints: Annotated[list[str], typer.Option(
        "--checkpoint", "-k", metavar="RUN|NAME=RUN", show_default=False,
        help="A run directory or .pt file to serve, named after its directory or NAME; "
             "repeat for several models (the first is the default).")],
    host: Annotated[str, typer.Option(
        help="Address to listen on; anything but loopback exposes the API to the network.")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    device: DeviceOption = "auto",
    max_streams: Annotated[int, typer.Option(
        help="Samples generated together per model (rows of the batch); more requests queue.")]
        = 64,
    max_queue: Annotated[int, typer.Option(
        help="Requests waiting per model beyond --max-streams; more get 503 and Retry-After.")]
        = 256,
    max_length: Annotated[int, typer.Option(help="The most characters a request may ask for.")]
        = 10_000,
    api_key: Annotated[str | None, typer.Option(
        envvar="CHARRNN_API_KEY", show_default=False, metavar="KEY",
        help="Require 'Authorization: Bearer KEY' on every request but the playground's "
             "page.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        show_default=False, metavar="NAME",
        help="A reverse proxy's public name: requests sent to NAME (on a loopback address, "
             "only loopback names otherwise) and its pages are answered. Repeatable.")] = None,
    threads: Annotated[int | None, typer.Option(
        show_default=False, help="CPU threads for the models, shared among them (default: "
                                 "every core the process may use).")] = None,
) -> None:
    """Serve models over HTTP: POST /v1/generate (JSON or streamed events), a playground at /.

    Requests arriving while others generate join the running batch: many users share a step.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CharRNNError(f"charrnn serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    from charrnn.devices import serving_threads, set_threads
    from charrnn.serve.models import close_models, load_models
    from charrnn.serve.server import bind, url_of
    from charrnn.serve.server import serve as run

    for name, value, least in (("--max-streams", max_streams, 1), ("--max-queue", max_queue, 0),
                               ("--max-length", max_length, 1),
                               ("--threads", 1 if threads is None else threads, 1)):
        if value < least:
            raise UsageError(f"{name} must be at least {least}, not {value}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    # This thread only loads the models and then serves HTTP: one torch thread, so that it
    # never forms a team of OpenMP threads of its own (see serving_threads).
    set_threads(1)
    sock = bind(host, port)
    try:
        models = load_models(checkpoints, device, max_streams=max_streams, max_queue=max_queue,
                             max_length=max_length,
                             threads=serving_threads(len(checkpoints), threads))
    except BaseException:
        sock.close()
        raise
    exposed = exposure_warning(host, api_key)
    if exposed:
        warn(exposed)
    url = url_of(sock)
    for served in models.values():
        info = served.info
        model_threads = served.engine.threads if info["device"] == "cpu" else None
        out.print(f"model [bold]{escape(served.name)}[/]: {info['cell']} {info['num_layers']}x"
                  f"{info['hidden_size']}, {info['vocab_size']} characters, on {info['device']}"
                  + (f" ({model_threads} thread{'s' if model_threads != 1 else ''})"
                     if model_threads else ""))
    out.print(f"serving at {url}  (playground {url}/, API {url}/v1/generate, docs {url}/docs"
              f"{'; API key required' if api_key else ''}); Ctrl-C stops")
    sys.stdout.flush()  # a supervisor or test reading the pipe sees the address now
    try:
        run(models, sock, api_key, allow_host or ())
    finally:
        close_models(models)
    out.print("stopped")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to tell someone serving an API without a key beyond this machine."""
    if api_key or _is_loopback(host):
        return None
    return (f"--host {host} exposes the API to the network with no authentication: anyone "
            "who can reach it can use it. Set --api-key KEY (or CHARRNN_API_KEY) to require a "
            "key.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
