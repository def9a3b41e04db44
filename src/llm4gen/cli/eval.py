"""`llm4gen eval ...`: generate images for a prompt file, score them, run compositional benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import DEVICE_HELP, app, console, parse_dtype, pick_device

eval_app = typer.Typer(
    help="Evaluate any pipeline: generate images for a prompt file, score them, run compositional benchmarks.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


@eval_app.command("generate")
def eval_generate(
    prompts_file: Path = typer.Argument(..., help="Prompts: .txt (one a line), .json, .jsonl, .csv or .tsv."),
    model: str = typer.Option(..., "--model", "-m", help="Any diffusers text-to-image pipeline folder or hub id "
                              "(LLM4GEN or not)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs (resumable). manifest.jsonl "
                              "goes in it, or beside it as OUT.manifest.jsonl with --naming compbench."),
    column: str | None = typer.Option(None, "--column", help="CSV column / JSON field with the prompt (default: "
                                      "prompt, text or caption)."),
    num_images: int = typer.Option(1, "--num-images", "-n", min=1, help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; image i of prompt p uses seed (SEED, p, i)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per pipeline call."),
    steps: int = typer.Option(50, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    height: int | None = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: int | None = typer.Option(None, "--width", help="Image width (default: the model's)."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt for every image."),
    naming: str = typer.Option("llm4gen", "--naming", help="File names: llm4gen ({prompt_index:05d}_{i:02d}.png) or "
                               "compbench ({prompt}_{index:06d}.png, T2I-CompBench's: OUT then holds only "
                               "the images, as its evaluators need)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts (smoke runs)."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: this process's accelerate "
                                      "device: cuda:i under `accelerate launch`, else cuda or cpu)."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default: as saved)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate images that already exist."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Generate N images per prompt of PROMPTS_FILE with fixed seeds, batched and resumable; writes manifest.jsonl.

    Several GPUs: `accelerate launch --num_processes N -m llm4gen eval generate ...` splits the images.
    """
    from ..eval.generate import GenerationSettings, generate_images
    from ..eval.prompts import read_prompt_records

    try:
        settings = GenerationSettings(num_images=num_images, seed=seed, steps=steps, guidance=guidance, height=height,
                                      width=width, negative_prompt=negative, naming=naming, batch_size=batch_size,
                                      limit=limit)
        records = read_prompt_records(prompts_file, column=column)
        result = generate_images(model, records, out, settings, device=device, dtype=parse_dtype(dtype),
                                 overwrite=overwrite, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    if not result.is_main_process:
        return
    rate = f"{result.generated / result.seconds:.2f} img/s" if result.generated and result.seconds > 0 else "-"
    table = Table(title=f"llm4gen eval generate: {out}")
    for col in ("planned", "already there", "generated (this process)", "speed"):
        table.add_column(col, justify="right")
    table.add_row(str(result.planned), str(result.skipped), str(result.generated), rate)
    Console().print(table)
    typer.echo(f"manifest: {result.manifest}")


@eval_app.command("score")
def eval_score(
    images_dir: Path = typer.Argument(..., help="A folder written by `llm4gen eval generate` (or any image folder "
                                      "for FID / IS only)."),
    clip_model: str | None = typer.Option(None, "--clip-model", help="CLIP score with this transformers CLIP model "
                                          "(hub id or folder), e.g. openai/clip-vit-large-patch14."),
    fid_ref: Path | None = typer.Option(None, "--fid-ref", help="FID against this reference image folder or .npz "
                                        "statistics."),
    fid_features: str | None = typer.Option(None, "--fid-features", help="FID features: inception:PATH (the FID "
                                            "Inception weight file) or hf:ID_OR_PATH (any transformers vision model)."),
    save_ref_stats: Path | None = typer.Option(None, "--save-ref-stats", help="Write the reference statistics to this "
                                               ".npz to reuse them with --fid-ref."),
    is_classifier: str | None = typer.Option(None, "--is-classifier", help="Inception Score with inception:PATH or "
                                             "hf:ID_OR_PATH (a transformers image classifier)."),
    is_splits: int = typer.Option(10, "--is-splits", min=1, help="Inception Score splits."),
    aesthetic_head: Path | None = typer.Option(None, "--aesthetic-head", help="LAION aesthetic predictor head "
                                               "(.pth/.safetensors), on --aesthetic-clip's image embeddings."),
    aesthetic_clip: str | None = typer.Option(None, "--aesthetic-clip", help="CLIP model for the aesthetic head "
                                              "(default: --clip-model)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N images (smoke runs)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the scoring models."),
    json_out: Path | None = typer.Option(None, "--json", help="JSON report (default: IMAGES_DIR/scores/scores.json, or "
                                      "IMAGES_DIR.scores/ beside a --naming compbench folder)."),
    chart: Path | None = typer.Option(None, "--chart", help="PNG chart (default: scores.png beside the default "
                                   "JSON report)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Score generated images: CLIP score, FID, Inception Score, aesthetics; prints a table, writes JSON and a PNG."""
    from ..eval.generate import manifest_path
    from ..eval.report import bar_chart, print_table, write_json
    from ..eval.score import score_generated
    from ..scoring.metrics import LaionAestheticPredictor

    try:
        device = pick_device(device)
        torch_dtype = parse_dtype(dtype)
        aesthetic = None
        if aesthetic_head is not None:
            ref = aesthetic_clip or clip_model
            if ref is None:
                raise ValueError("--aesthetic-head needs --aesthetic-clip (or --clip-model) for the image embeddings.")
            aesthetic = LaionAestheticPredictor(aesthetic_head, ref, device=device, batch_size=batch_size)
        report = score_generated(
            images_dir, clip_model=clip_model, fid_ref=fid_ref, fid_features=fid_features,
            is_classifier=is_classifier, is_splits=is_splits, aesthetic=aesthetic, limit=limit,
            batch_size=batch_size, device=device, dtype=torch_dtype, save_ref_stats=save_ref_stats, progress=True,
            trust_remote_code=trust_remote_code,
        )
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    m = report["metrics"]
    rows, values, errors = [], {}, {}
    for key, label, value_key, spread_key, source_key in (
        ("clip_score", "CLIP score", "mean", "std", "model"), ("fid", "FID", "value", None, "features"),
        ("inception_score", "Inception Score", "mean", "std", "classifier"),
        ("aesthetic", "aesthetic", "mean", "std", "scorer"),
    ):
        if key in m:
            spread = m[key].get(spread_key) if spread_key else None
            rows.append({"metric": label, "value": m[key][value_key], "std": spread, "n": m[key]["n"],
                         "model": m[key][source_key]})
            values[label] = {images_dir.name or str(images_dir): m[key][value_key]}
            if spread is not None:
                errors[label] = {images_dir.name or str(images_dir): spread}
    print_table(rows, title=f"llm4gen eval score: {images_dir} ({report['num_images']} images)")
    # a T2I-CompBench samples/ folder (manifest beside it) must keep nothing but images: the scores go beside it too
    scores_dir = images_dir / "scores"
    if manifest_path(images_dir).parent != images_dir:
        scores_dir = images_dir.parent / f"{images_dir.name}.scores"
    target = write_json(json_out or scores_dir / "scores.json", report)
    chart_path = bar_chart(values, chart or scores_dir / "scores.png", title=f"scores: {images_dir.name}",
                           errors=errors, shared_axis=False)
    typer.echo(f"report: {target}\nchart: {chart_path}")


# ---------------------------------------------------------------------- eval compbench / eval dpg
@eval_app.command("compbench")
def eval_compbench(
    root: Path = typer.Argument(..., help="Folder with one sub-folder per category holding samples/ "
                                "({prompt}_{index:06d}.png, from `llm4gen eval generate --naming compbench`)."),
    prompts_dir: Path = typer.Option(..., "--prompts-dir", help="T2I-CompBench's examples/dataset folder "
                                     "(color_val.txt, ..., complex_val_spatial.txt)."),
    categories: str = typer.Option("color,shape,texture,spatial,non_spatial,complex", "--categories",
                                   help="Comma-separated categories to score."),
    vqa_model: str = typer.Option("Salesforce/blip-vqa-base", "--vqa-model", help="BLIP VQA (or any image-text "
                                  "model) for the attribute categories."),
    detector: str = typer.Option("facebook/detr-resnet-50", "--detector", help="transformers object detector for "
                                 "spatial."),
    detector_threshold: float = typer.Option(0.5, "--detector-threshold", help="Minimum detection confidence."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", "--clip-model", help="CLIP model for "
                                   "non_spatial (the original used ViT-B/32)."),
    parser: str = typer.Option("auto", "--parser", help="Noun phrases: spacy (as the original), rule, or auto."),
    distance_threshold: float = typer.Option(150.0, "--distance-threshold", help="'near' distance in pixels "
                                             "(the original's 150 assumes 512 px images)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts per category."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per scoring batch."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the scoring models."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
) -> None:
    """Score T2I-CompBench images per category; writes the original's vqa_result.json files, a JSON summary, a PNG.

    Differences from the original evaluators (models, versions) are listed in docs/evaluation.md and in the JSON.
    """
    from ..eval.compbench import CompBenchScorers, run_compbench
    from ..eval.report import bar_chart, print_table
    from ..scoring.detect import HFObjectDetector
    from ..scoring.metrics import ClipScorer
    from ..scoring.vqa import load_vqa_scorer

    try:
        device = pick_device(device)
        torch_dtype = parse_dtype(dtype)
        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        scorers = CompBenchScorers(
            factories={
                "vqa": lambda: load_vqa_scorer(vqa_model, device=device, trust_remote_code=trust_remote_code, **kw),
                "detector": lambda: HFObjectDetector.from_pretrained(detector, device=device, threshold=
                                                                     detector_threshold, **kw),
                "clip": lambda: ClipScorer(clip_model, device=device, dtype=torch_dtype, batch_size=batch_size),
            },
            names={"vqa": vqa_model, "detector": detector, "clip": clip_model},
        )
        summary = run_compbench(root, prompts_dir, scorers, [c.strip() for c in categories.split(",") if c.strip()],
                                limit=limit, parser=parser, batch_size=batch_size,
                                distance_threshold=distance_threshold)
    except (ValueError, TypeError, OSError, ImportError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    cats = summary["categories"]
    print_table([{"category": c, "score": v["score"], "metric": v["metric"], "images": v["num_images"]}
                 for c, v in cats.items()], title=f"T2I-CompBench: {root}")
    chart = bar_chart({c: {root.name or "model": v["score"]} for c, v in cats.items()}, root / "compbench.png",
                      title="T2I-CompBench", ylim=(0.0, 1.0))
    typer.echo(f"results: {root / 'compbench_results.json'}\nchart: {chart}")


@eval_app.command("dpg")
def eval_dpg(
    images_dir: Path = typer.Argument(..., help="Images: an `llm4gen eval generate` folder (manifest with item_id), "
                                      "{item_id}.png 2x2 grids, or {item_id}_{k}.png files."),
    questions: Path = typer.Option(..., "--questions", help="DPG-Bench's dpg_bench.csv or a questions JSONL file."),
    vqa_model: str = typer.Option("Salesforce/blip-vqa-base", "--vqa-model", help="VQA model (BLIP VQA or any "
                                  "image-text-to-text model)."),
    mode: str = typer.Option("prob", "--mode", help="prob: yes if P(yes) > 0.5; exact: the generated answer must "
                             "start with 'yes'."),
    soft: bool = typer.Option(False, "--soft", help="Use P(yes) itself instead of yes/no; a question counts its "
                              "P(yes) times its parents' (gated) values."),
    pic_num: int = typer.Option(4, "--pic-num", min=1, max=4, help="Tiles per grid image."),
    resolution: int | None = typer.Option(None, "--resolution", help="Tile size in pixels (default: half the grid)."),
    export_prompts: Path | None = typer.Option(None, "--export-prompts", help="Only write the prompt file "
                                               "({item_id, prompt} JSONL) for `llm4gen eval generate`, then stop."),
    export_grids: Path | None = typer.Option(None, "--export-grids", help="Only write IMAGES_DIR's images (an "
                                             "`llm4gen eval generate` folder) as {item_id}.png 2x2 grids to this "
                                             "folder, which ELLA's compute_dpg_bench.py scores, then stop."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the results (default: IMAGES_DIR)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32, fp16 or bf16 for the VQA model."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """DPG-Bench-style scoring: yes/no questions per dense prompt, parent questions gate their children."""
    from ..eval.dpg import run_dpg, write_grids, write_prompt_file
    from ..eval.report import bar_chart, print_table
    from ..scoring.vqa import load_vqa_scorer

    try:
        if export_prompts is not None:
            typer.echo(f"prompt file: {write_prompt_file(questions, export_prompts)}")
            return
        if export_grids is not None:
            files, size, tiles = write_grids(images_dir, export_grids)
            typer.echo(f"{len(files)} grids in {export_grids} ({tiles} tiles of {size} px). Score them with ELLA's "
                       f"scorer: PIC_NUM={tiles} bash dpg_bench/dist_eval.sh {export_grids} {size}")
            return
        device = pick_device(device)
        torch_dtype = parse_dtype(dtype)
        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        vqa = load_vqa_scorer(vqa_model, device=device, mode=mode, trust_remote_code=trust_remote_code, **kw)
        summary = run_dpg(images_dir, questions, vqa, out_dir=out, pic_num=pic_num, resolution=resolution,
                          limit=limit, soft=soft, scorer_name=vqa_model)
    except (ValueError, TypeError, OSError) as err:
        console.print(f"[red]Error:[/red] {err}")
        raise typer.Exit(1) from None
    target = out or images_dir
    rows = [{"category": k, "score": v} for k, v in summary["level1"].items()]
    rows.append({"category": "DPG score", "score": summary["dpg_score"]})
    print_table(rows, title=f"DPG ({summary['num_prompts']} prompts, {vqa_model})", float_format="{:.2f}")
    chart = bar_chart({r["category"]: {images_dir.name or "model": r["score"]} for r in rows}, target / "dpg.png",
                      title="DPG-Bench style", ylim=(0.0, 100.0))
    typer.echo(f"results: {target / 'dpg_results.json'}\nchart: {chart}")
