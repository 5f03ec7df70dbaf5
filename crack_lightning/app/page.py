"""The inspectors' page (Gradio Blocks) over an :class:`~crack_lightning.app.inspector.Inspector`.

Every event is also an endpoint of Gradio's HTTP API (``/analyse``, ``/threshold``, ``/point``,
``/flag``), which the tests call with ``gradio_client``; the page state (the last batch) is per
browser session. Element ids (``elem_id``) are what the browser test looks for.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gradio as gr

from crack_lightning.app.inspector import Batch, Inspector
from crack_lightning.data.imagefolder import is_image_name

MODES = {"auto": "auto: whole photos when an image is large", "photos": "whole photos (heatmap)",
         "patches": "patches (one verdict per image)"}
TABLE = ["image", "verdict", "crack probability", "threshold", "crack area", "error"]


def build_page(inspector: Inspector) -> gr.Blocks:
    card = inspector.card
    classes = card.class_names
    crack_label = classes[card.positive_labels[0]]
    with gr.Blocks(title="crack-lightning inspector", analytics_enabled=False) as page:
        batch = gr.State(None)
        gr.Markdown(f"## Crack inspector\nModel `{Path(inspector.backend.path).name}` ({inspector.backend.model_hash}), "
                    f"classes {', '.join(classes)}; crack when P({' or '.join(card.positive_classes)}) > threshold. "
                    f"Nothing leaves this computer.")
        with gr.Row():
            uploads = gr.File(label="Photos: images, a zip of images, or several at once", file_count="multiple",
                              elem_id="uploads")
            folder = gr.File(label="... or a folder of photos", file_count="directory", elem_id="folder")
            with gr.Column():
                mode = gr.Radio([(v, k) for k, v in MODES.items()], value="auto", label="Images are")
                analyse_button = gr.Button("Analyse", variant="primary", elem_id="analyse")
        status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(headers=TABLE, interactive=False, elem_id="verdicts", wrap=True)
        gallery = gr.Gallery(label="Heatmaps (whole photos) or images, with their verdict", columns=3, height=460,
                             object_fit="contain", elem_id="gallery")
        with gr.Row():
            with gr.Column():
                point = gr.Dropdown(inspector.points(), value=inspector.point, label="Operating point")
                threshold = gr.Slider(0, 1, value=card.threshold, step=0.0001, label="Threshold", elem_id="threshold")
                consequences = gr.Markdown(_consequences(inspector, card.threshold), elem_id="consequences")
            download = gr.File(label="predictions.csv (as predict.py writes it)", elem_id="download")
        with gr.Row():
            image = gr.Dropdown([], label="Wrong answer? The image", elem_id="flag-image")
            label = gr.Radio(classes, value=crack_label, label="Its correct class")
            flag_button = gr.Button("Save correction", elem_id="flag")
        flag_status = gr.Markdown(_flag_count(inspector), elem_id="flag-status")

        shown = [status, table, gallery, download, consequences]

        def analyse(files, tree, how):
            # a folder's files that training would take as images (its other files are no upload of the user's)
            files = [*(files or []), *(f for f in tree or [] if is_image_name(_path(f).name))]
            if not files:
                return None, "Upload one or more images first (or a zip of them).", None, None, None, gr.skip(), \
                    gr.skip(), gr.update(choices=[], value=None)
            try:
                new = inspector.analyse([_path(f) for f in files], how)
            except ValueError as err:  # nothing scoreable: say why, keep the page
                return None, f"**Nothing analysed.** {err}", None, None, None, gr.skip(), gr.skip(), \
                    gr.update(choices=[], value=None)
            names = [f"{k + 1}: {p.name}" for k, p in enumerate(new.scores.inputs.files)]
            return new, *_show(inspector, new, inspector.card.threshold), inspector.card.threshold, \
                gr.update(choices=names, value=names[0])

        def rethreshold(current, value):
            if current is None:
                return None, None, None, None, _consequences(inspector, value)
            return _show(inspector, current, value)

        def choose_point(current, name):
            value, current = inspector.use_point(name, current)  # the batch scored again at its temperature
            return current, value, *rethreshold(current, value)

        def flag(current, chosen, correct):
            if current is None or not chosen:
                return "Analyse images first, then pick the one the model got wrong."
            index = int(chosen.split(":", 1)[0]) - 1
            if current.scores.errors[index]:
                return f"{chosen}: the model could not read it ({current.scores.errors[index]}); nothing saved."
            target = inspector.flag(current, index, correct)
            return f"Saved {chosen.split(': ', 1)[1]} as **{correct}** in `{target.parent}`. " + _flag_count(inspector)

        analyse_button.click(analyse, [uploads, folder, mode], [batch, *shown, threshold, image], api_name="analyse")
        threshold.release(rethreshold, [batch, threshold], shown, api_name="threshold")
        point.change(choose_point, [batch, point], [batch, threshold, *shown], api_name="point")
        flag_button.click(flag, [batch, image, label], flag_status, api_name="flag")
    return page


def _path(upload) -> Path:
    return Path(upload if isinstance(upload, str) else getattr(upload, "path", None) or upload.name)


def _show(inspector: Inspector, batch: Batch, threshold: float):
    """(status, table, gallery, csv, consequences) of ``batch`` at ``threshold``: predictions.csv
    written first, and everything shown read back from it."""
    summary = inspector.write(batch, threshold)
    with open(summary["predictions"], newline="") as f:
        rows = list(csv.DictReader(f))
    cracks = inspector.card.positive_classes
    table, gallery = [], []
    for row in rows:
        name = Path(row["path"]).name
        if row["error"]:
            table.append([name, "unreadable", "", f"{threshold:.4g}", "", row["error"].replace(row["path"], name)])
            continue
        # the CSV's own verdict: two classes, the label; more, its crack column
        crack = row["crack"] == "true" if "crack" in row else row["label"] in cracks
        verdict, prob = "CRACK" if crack else "no crack", float(row["crack_probability"])
        area = f"{float(row['crack_area_fraction']):.1%}" if row.get("crack_area_fraction") else ""
        table.append([name, verdict, f"{prob:.4f}", f"{threshold:.4g}", area, ""])
        gallery.append((row.get("heatmap") or row["path"], f"{name}: {verdict} ({prob:.3f})"))
    status = (f"**{summary['images']} image(s): {summary['cracks']} CRACK, "
              f"{summary['images'] - summary['cracks'] - summary['errors']} no crack"
              + (f", {summary['errors']} unreadable (see the error column)" if summary["errors"] else "")
              + f"** at threshold {threshold:.4g}" + (" (whole photos, window by window)" if batch.tiled else ""))
    if batch.refused:
        status += "\n\nNot analysed: " + "; ".join(batch.refused)
    return status, table, gallery, summary["predictions"], _consequences(inspector, threshold)


def _consequences(inspector: Inspector, threshold: float) -> str:
    said = inspector.consequences(threshold)
    if said is None:
        return ("This model file stores no validation scores (trained before they were kept): what a threshold "
                "implies is not known here.")
    fitted = said["fitted"]

    def share(v: float) -> str:
        return "–" if math.isnan(v) else f"{v:.1%}"
    return (f"At threshold **{threshold:.4g}** on the {said['split']} ({said['cracks']} cracks, {said['others']} "
            f"others): recall **{share(said['recall'])}**, precision {share(said['precision'])}, "
            f"**{said['missed_cracks']} missed crack(s)**, {said['false_alarms']} false alarm(s). "
            f"The point {said['point']} was fitted there at {fitted.get('threshold', float('nan')):.4g} "
            f"for recall ≥ {fitted.get('target_recall', float('nan')):g}.")


def _flag_count(inspector: Inspector) -> str:
    counts = inspector.flagged()
    return (f"Corrections so far in `{inspector.flag_dir}`: " + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f". Retrain or recalibrate with them: `python recalibrate.py ckpt=... data.root={inspector.flag_dir}`.")
