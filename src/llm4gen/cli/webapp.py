"""`llm4gen app`: serve the web app."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer
from rich.markup import escape

from ..sampling import DEFAULT_STEPS
from .common import (
    DEVICE_HELP,
    DTYPE_HELP,
    app,
    console,
    model_or_bundled,
    pick_device,
    resolve_dtype,
    sampling_settings,
    say_domain,
)


def install_hint(extra: str) -> str:
    """How to install an extra of this project: from the checkout this code runs from, if it does (llm4gen is not on
    a package index), else from a checkout of the repository."""
    checkout = Path(__file__).resolve().parents[3]
    where = str(checkout) if (checkout / "pyproject.toml").is_file() else "/path/to/your/llm4gen/checkout"
    return f'pip install "{where}[{extra}]"'


@app.command("app")
def app_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="LLM4GEN pipeline folder or hub id. Default: the bundled model (models/default)."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="A plain SD folder or hub id for the base side (default: MODEL/base_unet/ if it "
        "exists, else MODEL's own UNet with CLIP-only conditioning)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the app on your network."),
    port: int | None = typer.Option(None, "--port", help="Port (default: a free one)."),
    share: bool = typer.Option(False, "--share", help="Also open a public gradio.live link."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    steps: int | None = typer.Option(
        None, "--steps", min=1,
        help=f"The page's default number of denoising steps (default: the model's, else {DEFAULT_STEPS})."),
    guidance: float | None = typer.Option(
        None, "--guidance", min=0.0,
        help="The page's default guidance scale (default: the model's llm4gen_sampling.json, 5 for the bundled "
             "model; else 7.5)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the LLM's own Python code."),
    allow_model: list[str] = typer.Option(
        [], "--allow-model", metavar="MODEL",
        help="Another model the page offers (repeatable). Served beyond localhost (--host 0.0.0.0, --share), the page "
             "loads only --model and these, never with their own code."),
) -> None:
    """Serve the web app: long prompts rendered side by side by the base (CLIP only) path and by LLM4GEN."""
    if importlib.util.find_spec("gradio") is None:  # before any model loads or anything is served
        console.print("[red]The web app needs gradio, which is not installed.[/red] Install the app extra: "
                      + escape(install_hint("app")), highlight=False)
        raise typer.Exit(2)
    from .. import app as web

    bundled = model is None
    model = model_or_bundled(model)
    guidance, steps, sampling = sampling_settings(model, guidance, steps)
    if bundled:
        say_domain(sampling)
    try:
        device = pick_device(device)
        loaded = web.load_model(model, base_model=base_model, device=device, trust_remote_code=trust_remote_code,
                                dtype=resolve_dtype(dtype, device))
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    console.print(f"Model: {loaded.ref}; base side: {loaded.base_source}.")
    console.print(f"Serving on http://{host}:{port or '<free port>'}/ (Ctrl+C stops it)")
    if web.is_exposed(host, share):
        console.print("Reachable beyond this machine: the page loads only the models given here "
                      f"({', '.join([loaded.ref, *allow_model])}).")
    web.launch(loaded, host=host, port=port, share=share, device=device, default_steps=steps, default_guidance=guidance,
               trust_remote_code=trust_remote_code, allowed_models=allow_model)
