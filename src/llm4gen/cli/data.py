"""`llm4gen data ...`: dense prompts with a local LLM, recaptioned image sets."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DEVICE_HELP, app, console, pick_device

data_app = typer.Typer(help="Build data: dense prompts with a local LLM, recaptioned image sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("dense-prompts")
def data_dense_prompts(
    out: Path = typer.Argument(..., help="JSONL to append to (resumable): id, prompt, num_words, tags, topic."),
    model: str = typer.Option(..., "--model", "-m", help="Instruction LLM (transformers causal LM), e.g. "
                              "Qwen/Qwen2.5-7B-Instruct."),
    num: int = typer.Option(7000, "--num", "-n", min=1, help="Prompts the file should hold."),
    min_words: int = typer.Option(40, "--min-words", min=1, help="Shortest prompt kept."),
    max_words: int = typer.Option(140, "--max-words", min=1, help="Longest prompt kept."),
    examples: Path | None = typer.Option(None, "--examples", help="Few-shot examples: a text file (paragraphs) or "
                                         "JSONL (prompt field). Default: the built-in ones."),
    shots: int = typer.Option(3, "--shots", min=0, help="Examples shown per request."),
    near_dup: float = typer.Option(0.7, "--near-dup", help="Word 3-gram Jaccard at which a prompt is a near "
                                   "duplicate."),
    temperature: float = typer.Option(0.9, "--temperature", help="Sampling temperature."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Tokens per answer."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Requests per generate call."),
    seed: int = typer.Option(0, "--seed", help="Seed of topics, examples and sampling."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Stop at N prompts (smoke runs)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16 or bfloat16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Write DensePrompts: dense 40-140-word prompts from a local LLM, deduplicated, length-filtered and tagged."""
    from ..data.dense_prompts import DensePromptsConfig, build_dense_prompts, read_examples
    from ..eval.report import print_table

    try:
        device = pick_device(device)
        extra = {"examples": read_examples(examples)} if examples is not None else {}
        cfg = DensePromptsConfig(model=model, num_prompts=min(num, limit or num), min_words=min_words,
                                 max_words=max_words, num_shots=shots, near_duplicate_threshold=near_dup,
                                 temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 seed=seed, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
        stats = build_dense_prompts(cfg, out)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    print_table([{"count": k, "n": v} for k, v in stats["counts"].items()], title=f"DensePrompts: {out}")
    if not stats["complete"]:
        console.print(f"[yellow]Stopped at {stats['num_prompts']} of {cfg.num_prompts} prompts (too many drops); "
                      "run again to continue.[/yellow]")
    typer.echo(f"prompts: {out}\nstats: {out}.stats.json")


@data_app.command("recaption")
def data_recaption(
    source: str = typer.Argument(..., help="Image folder, WebDataset shards ('shards/{000..009}.tar') or a Hugging "
                                 "Face dataset (id or folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (resumable)."),
    captioner: str = typer.Option(..., "--captioner", help="transformers image-to-text model, e.g. "
                                  "llava-hf/llava-1.5-7b-hf or Qwen/Qwen2-VL-7B-Instruct."),
    instruction: str | None = typer.Option(None, "--instruction", help="What to ask the captioner (default: the "
                                           "paper's 'describe this image in more than 50 words...')."),
    prompt_style: str = typer.Option("auto", "--prompt-style", help="auto, chat, prefix or none."),
    output_format: str = typer.Option("imagefolder", "--format", help="imagefolder (+ metadata.jsonl) or "
                                      "webdataset."),
    input_type: str = typer.Option("auto", "--input-type", help="auto, imagefolder, webdataset or hf."),
    min_resolution: int = typer.Option(0, "--min-resolution", min=0, help="Minimum shorter side in pixels."),
    max_aspect_ratio: float | None = typer.Option(None, "--max-aspect-ratio", help="Maximum long/short side."),
    min_aesthetic: float | None = typer.Option(None, "--min-aesthetic", help="Minimum LAION aesthetic score."),
    aesthetic_head: str | None = typer.Option(None, "--aesthetic-head", help="LAION aesthetic predictor head file."),
    aesthetic_clip: str = typer.Option("openai/clip-vit-large-patch14", "--aesthetic-clip",
                                       help="CLIP model of the aesthetic head."),
    min_clip_similarity: float | None = typer.Option(None, "--min-clip-similarity", help="Minimum cosine of the "
                                                     "image and its original caption (LAION used 0.28, ViT-B/32)."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", "--clip-model", help="CLIP model for that filter."),
    min_caption_words: int = typer.Option(1, "--min-caption-words", min=0, help="Drop shorter new captions."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Caption length limit in tokens."),
    caption_column: str = typer.Option("text", "--caption-column", help="Column/field of the original captions."),
    image_column: str = typer.Option("image", "--image-column", help="Image column of a HF dataset."),
    split: str = typer.Option("train", "--split", help="Split of a HF dataset."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per captioning batch."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per output tar shard."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N input images."),
    device: str = typer.Option(
        "auto", "--device", help=DEVICE_HELP + " Under accelerate, cuda means each process's own GPU."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Filter and recaption images with a VLM; writes what `llm4gen train` reads, and a per-filter report.

    Several GPUs: `accelerate launch --num_processes N -m llm4gen data recaption ... --device cuda`.
    """
    from ..data.recaption import DEFAULT_INSTRUCTION, RecaptionConfig, recaption
    from ..eval.report import print_table

    try:
        device = pick_device(device)
    except ValueError as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if device == "cuda":
        from accelerate import PartialState

        device = str(PartialState().device)
    try:
        cfg = RecaptionConfig(input=source, output_dir=str(out), captioner=captioner,
                              instruction=instruction or DEFAULT_INSTRUCTION, prompt_style=prompt_style,
                              output_format=output_format, input_type=input_type, min_resolution=min_resolution,
                              max_aspect_ratio=max_aspect_ratio, min_aesthetic=min_aesthetic,
                              aesthetic_head=aesthetic_head, aesthetic_clip=aesthetic_clip,
                              min_clip_similarity=min_clip_similarity, clip_model=clip_model,
                              min_caption_words=min_caption_words, max_new_tokens=max_new_tokens,
                              caption_column=caption_column, image_column=image_column, split=split,
                              batch_size=batch_size, shard_size=shard_size, limit=limit, device=device, dtype=dtype,
                              trust_remote_code=trust_remote_code)
        report = recaption(cfg)
    except (ValueError, TypeError, OSError, ImportError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    print_table(report["filters"], title=f"recaption: {report['kept']} of {report['total']} kept")
    typer.echo(f"output: {out}\nreport: {out / 'recaption_report.json'}")
