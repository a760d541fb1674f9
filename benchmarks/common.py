"""What every benchmark script shares: isolated worker processes, a Markdown table, a JSON file."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_worker(script: Path, worker_args: list[str], timeout: float) -> dict[str, Any]:
    """Run `script --worker ...` in a fresh process; a crash, an OOM or a timeout becomes an `error` entry."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = Path(handle.name)
    command = [sys.executable, str(script), *worker_args, "--result-file", str(result_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    # A session of its own, so a timeout also ends its compile workers and data loader processes.
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        result_file.unlink(missing_ok=True)
        return {"error": f"timed out after {timeout:.0f} s", "output_tail": _text(output)[-3000:]}
    wall = time.perf_counter() - started
    output_tail, returncode = _text(output)[-3000:], process.returncode
    try:
        result = json.loads(result_file.read_text()) if result_file.stat().st_size else {}
    finally:
        result_file.unlink(missing_ok=True)
    if returncode != 0 or not result:
        return {"error": f"exit code {returncode}", "output_tail": output_tail, "wall_seconds": round(wall, 1)}
    result["wall_seconds"] = round(wall, 1)
    return result


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=str))


def environment() -> dict[str, Any]:
    """Versions and hardware, so a table can be traced back to the machine that produced it."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """`columns` are (key, header) pairs; missing values print as an em dash."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def save_report(out_dir: str | Path, name: str, report: dict[str, Any], table: str) -> Path:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    (folder / f"{name}.md").write_text(table + "\n")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value).replace("|", "/").replace("\n", " ")


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
