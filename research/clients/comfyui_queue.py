"""Queue ``comfyui/workflow_api.json`` on a running ComfyUI (POST /prompt), with the image size and steps given,
wait for it (GET /history) and print the saved image's statistics, or the node error.

    python research/clients/comfyui_queue.py http://127.0.0.1:8199 comfyui/workflow_api.json \\
        --size 256 --steps 4 --comfyui ComfyUI
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("workflow")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model-path", help="another folder under models/diffusers/ for both loaders")
    parser.add_argument("--comfyui", required=True, help="ComfyUI's folder (its output/ holds the image)")
    args = parser.parse_args()
    with open(args.workflow, encoding="utf-8") as f:
        graph = json.load(f)
    for node in graph.values():
        node.pop("_meta", None)
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=args.size, height=args.size)
        elif node["class_type"] == "KSampler":
            inputs["steps"] = args.steps
        elif args.model_path and node["class_type"] == "DiffusersLoader":
            inputs["model_path"] = args.model_path
        elif args.model_path and node["class_type"] == "LLM4GenLoader":
            inputs["model_path"] = f"models/diffusers/{args.model_path}"
    request = urllib.request.Request(f"{args.url}/prompt", data=json.dumps({"prompt": graph}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        prompt_id = json.load(urllib.request.urlopen(request))["prompt_id"]
    except urllib.error.HTTPError as err:
        raise SystemExit(f"refused: {err.read().decode()[:2000]}") from err
    start = time.time()
    while True:
        entry = json.load(urllib.request.urlopen(f"{args.url}/history/{prompt_id}")).get(prompt_id, {})
        if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
            break
        time.sleep(2)
    print(f"status: {entry['status']['status_str']}, {time.time() - start:.1f} s")
    for kind, message in entry["status"].get("messages", []):
        if kind == "execution_error":
            print(f"error in {message.get('node_type')}: {message.get('exception_message', '')[:1500]}")
    for output in entry.get("outputs", {}).values():
        for image in output.get("images", []):
            path = os.path.join(args.comfyui, "output", image["subfolder"], image["filename"])
            pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float64) / 255
            verdict = "black" if pixels.max() < 0.02 else "not black"
            print(f"{path} {pixels.shape}: mean {pixels.mean():.4f}, std {pixels.std():.4f}, {verdict}")


if __name__ == "__main__":
    main()
