"""The codec's read-only commands: ``info`` describes a .vqz file, ``models`` lists the bundled models."""

from __future__ import annotations

import json
from typing import Any

import click

from vqcodec.cli_errors import EXIT_STATUS, reports_errors
from vqcodec.cli_files import codec_warnings, progress_bar, read_vqz_input, standard_stream
from vqcodec.cli_options import device_option, model_option, threads_option
from vqcodec.quality import describe_qualities
from vqcodec.threads import limited


@click.command(epilog=EXIT_STATUS)
@model_option("the bundled model the file names")
@click.option(
    "--bits",
    is_flag=True,
    help="Also decode the codes (with the file's model: bundled, or --model) to count the ideal bits of"
    " every level and the range coder's overhead.",
)
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@reports_errors
def info(
    source: str, model: str | None, bits: bool, device: str | None, threads: int | None, as_json: bool
) -> None:
    """Describe a .vqz file: image, model, code maps and, with --bits, where the bits go.

    Without --bits only the header is read: no model, no decoding (a --model given is checked
    against the file by its id, a digest of its bytes).

    \b
    Examples:
      vqcodec info photo.vqz
      vqcodec info --bits photo.vqz
      vqcodec info --bits --model tiny.safetensors --json photo.vqz
    """
    import vqcodec

    with codec_warnings():
        standard_stream("stdout")  # the report's only way out
        data = read_vqz_input(source)
        with progress_bar("decoding codes", quiet=not bits) as progress, limited(threads):
            report = vqcodec.info(data, model, device, bits=bits, progress=progress)
        click.echo(json.dumps(report, indent=2) if as_json else _format_info(source, report, bits))


def _format_info(source: str, r: dict[str, Any], bits: bool) -> str:
    """``vqcodec.info``'s report as aligned lines, one per part of the file."""
    model = r["model"] or "not bundled"
    extras = [
        f"{kind} {r[key]} bytes"
        for kind, key in (("ICC profile", "icc_bytes"), ("EXIF", "exif_bytes"), ("XMP", "xmp_bytes"))
        if r.get(key)
    ]
    extras += ["alpha plane"] if r["alpha"] else []
    lines = [
        f"file      {source}: {r['file_bytes']} bytes, {r['bpp']:.4f} bpp",
        f"image     {r['width']}x{r['height']} (WxH) {r['colour']}"
        f" (padding: {r['padding']}){'; ' + ', '.join(extras) if extras else ''}",
        *(
            [f"coded     {r['coded_width']}x{r['coded_height']} (WxH), resized to the image on decoding"]
            if (r["coded_width"], r["coded_height"]) != (r["width"], r["height"])
            else []
        ),
        *(
            [f"tiles     {r['tile'][0]}x{r['tile'][1]} (WxH) pixels, coded as independent images"]
            if r["tile"]
            else []
        ),
        f"model     {r['model_id']} ({model})",
        "levels    name       shape (h x w)   codes   ideal bits  bits/code",
    ]
    for level in r["levels"]:
        h, w = level["shape"]
        ideal = "-" if level["ideal_bits"] is None else f"{level['ideal_bits']:.1f}"
        per_code = "-" if level["bits_per_code"] is None else f"{level['bits_per_code']:.3f}"
        lines.append(
            f"          {level['name']:<10} {f'{h} x {w}':<15} {level['codes']:>6} {ideal:>12} {per_code:>10}"
        )
    lines.append(f"payload   {r['payload_bytes']} bytes = {r['payload_bits']} bits")
    if not bits:
        lines.append("ideal     not counted: --bits decodes the codes to count them")
    elif r["ideal_bits"] is None:
        lines.append("ideal     unknown: the file's model is not available (give it with --model)")
    else:
        lines.append(
            f"ideal     {r['ideal_bits']:.1f} bits; the payload is {r['overhead_percent']:+.3f} % over"
        )
    lines.append(f"container {r['container_bytes']} bytes (header, chunks, CRCs)")
    return "\n".join(lines)


@click.command()
@reports_errors
def models() -> None:
    """List the bundled models.

    Prints each one's name, SHA-256 and size.
    A .vqz file names its model by the first 32 hex digits of the SHA-256.
    """
    from vqcodec.zoo import ZOO_DIR, list_models

    with codec_warnings():
        found = list_models()
        if not found:
            click.echo(f"no bundled models (none in {ZOO_DIR})", err=True)
        for model in found:
            description = f"  {model.description}" if model.description else ""
            click.echo(f"{model.name:<16} {model.sha256}  {model.size / 1e6:8.2f} MB{description}")
        if found:
            click.echo(f"qualities (vqcodec compress --quality N), for every model: {describe_qualities()}")
