"""What `moedge inspect` says about a bundle beyond its spec: format, graphs, tokenizer, chat template, bos/eos."""

from __future__ import annotations

from pathlib import Path

from moedge.runtime.bundle import FORMAT_VERSION, Manifest


def human_size(size: int) -> str:
    """Bytes as kB, MB or GB (decimal), three significant digits or so."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}" if size < 10 * scale else f"{size / scale:.1f} {unit}"
    return f"{size} B"


def graphs_line(manifest: Manifest) -> str:
    """The layer graphs' count and sizes (their weights live in the dense file), and the optional full graph."""
    sizes = [manifest.files[name]["size"] for name in manifest.layer_graphs]
    low, high = human_size(min(sizes)), human_size(max(sizes))
    span = low if low == high else f"{low} to {high}"
    line = f"graphs: {len(sizes)} layer graphs of {span} each (their weights are in {manifest.dense_file})"
    if manifest.full_graph:
        line += f"; whole-model graph {manifest.full_graph} {human_size(manifest.files[manifest.full_graph]['size'])}"
    return line


def _token_names(folder: Path, manifest: Manifest):
    """id -> token string from the bundle's tokenizer (None without one)."""
    if manifest.tokenizer is None:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / manifest.tokenizer))
    return tokenizer.id_to_token, tokenizer.get_vocab_size()


def _ids(value, name) -> str:
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not ids:
        return "none"
    return ", ".join(f"{i}" + (f" {name(i)!r}" if name and name(i) is not None else "") for i in ids)


def text_lines(folder: str | Path, manifest: Manifest) -> list[str]:
    """The format version, the tokenizer, the chat template and the bos/eos ids (with their tokens)."""
    generation = manifest.generation
    names = _token_names(Path(folder), manifest)
    name = names[0] if names else None
    tokenizer = f"{manifest.tokenizer} ({names[1]} tokens)" if names else "none (prompts must be token ids)"
    template = generation.get("chat_template")
    template = f"yes ({len(template)} characters)" if template else "none (moedge chat continues plain text)"
    return [f"format: moedge bundle version {FORMAT_VERSION}",
            f"tokenizer: {tokenizer}; chat template: {template}",
            f"bos: {_ids(generation.get('bos_token_id'), name)}; eos: {_ids(generation.get('eos_token_id'), name)}"]
