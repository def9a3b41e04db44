"""`llm4gen app`: serve the web app."""

from __future__ import annotations

import importlib.util

import typer

from .common import BUNDLED_GUIDANCE, app, check_device, console, guidance_or_default, model_or_bundled


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
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu, cuda, cuda:1, mps."),
    steps: int = typer.Option(25, "--steps", min=1, help="The page's default number of denoising steps."),
    guidance: float | None = typer.Option(
        None, "--guidance", min=0.0,
        help=f"The page's default guidance scale (default: 7.5, {BUNDLED_GUIDANCE} for the bundled model)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the LLM's own Python code."),
    allow_model: list[str] = typer.Option(
        [], "--allow-model", metavar="MODEL",
        help="Another model the page offers (repeatable). Served beyond localhost (--host 0.0.0.0, --share), the page "
             "loads only --model and these, never with their own code."),
) -> None:
    """Serve the web app: long prompts rendered side by side by the base (CLIP only) path and by LLM4GEN."""
    if importlib.util.find_spec("gradio") is None:
        console.print("[red]The web app needs gradio:[/red] pip install 'llm4gen[app]'.")
        raise typer.Exit(2)
    from .. import app as web

    guidance = guidance_or_default(guidance, model)
    model = model_or_bundled(model)
    try:
        check_device(device)
        loaded = web.load_model(model, base_model=base_model, device=device, trust_remote_code=trust_remote_code)
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
