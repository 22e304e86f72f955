"""Run descriptions: the markdown MLflow shows at the top of a run's page.

A population run says what was trained, how far it got and how well it did (the final
table, as ``graftune.run`` prints it), which network is best and how to load it, and the
settings that differ from the defaults, as the flags that would repeat it. A search's
parent run says which trial won and with which settings.
"""

from __future__ import annotations

from typing import Any

from graftune.config import Config, flag_name, flatten
from graftune.data import ImageSet


def flags(settings: dict[str, Any]) -> str:
    """Settings as command-line flags: ``{"train/epochs": 2}`` -> ``--epochs 2``."""
    words = []
    for key, value in settings.items():
        flag = flag_name(key.split("/")[-1])
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def changed_settings(config: Config) -> dict[str, Any]:
    """The settings whose values differ from the defaults of :class:`Config`."""
    defaults = flatten(Config())
    return {k: v for k, v in flatten(config).items() if v != defaults[k]}


def run_description(
    config: Config,
    data: ImageSet,
    history: list[dict[str, Any]],
    status: str = "RUNNING",
    best: int | None = None,
    run_id: str = "",
    registered: str = "",
) -> str:
    """Markdown for a population run in ``status``; ``history`` as the run records it.

    Args:
        best: the best network by final test accuracy, once the run has finished.
        run_id: the run, to show how its best network loads (when models were logged).
        registered: ``"NAME version V"`` where the best network was registered.
    """
    k, model = config.population.num_models, config.model.model
    sizes = f"{len(data.train_labels)} train / {len(data.test_labels)} test images"
    rounds = f"round {history[-1]['round']}" if history else "the start"
    state = {"RUNNING": "running", "FINISHED": "finished"}.get(status, status.lower())
    lines = [
        f"**{k} x {model}** grafted ({config.graft.source}) on **{config.data.dataset}** "
        f"({sizes}): {state} after {rounds}.",
        "",
    ]
    if history:
        lines += final_table(history[-1], best) + [""]
    if best is not None and run_id and config.tracking.log_models:
        lines.append(
            f'Best network: `net{best}`; load it with `mlflow.pytorch.load_model("runs:/'
            f'{run_id}/net{best}")`' + (f", registered as {registered}." if registered else ".")
        )
        lines.append("")
    changed = changed_settings(config)
    lines.append(
        f"Settings that differ from the defaults: `{flags(changed)}`"
        if changed
        else "All settings are the defaults."
    )
    return "\n".join(lines) + "\n"


def final_table(final: dict[str, Any], best: int | None) -> list[str]:
    """The test accuracy of each network and of the population, as a markdown table."""
    rows = ["| network | test acc |", "|---|---:|"]
    for k, network in enumerate(final["networks"]):
        mark = " (best)" if k == best else ""
        rows.append(f"| net{k}{mark} | {network['test_acc']:.2%} |")
    p = final["population"]
    for name in ("mean", "best", "ensemble", "soup"):
        if f"{name}_test_acc" in p:  # the soup only where the run made one
            rows.append(f"| **{name}** | **{p[f'{name}_test_acc']:.2%}** |")
    return rows


def search_description(state: dict[str, Any], summary: dict[str, Any] | None) -> str:
    """Markdown for a search's parent run; ``summary`` as graftune.tune writes best.json
    (None while the search runs or when no trial reported)."""
    head = (
        f"**Search `{state['name']}`**: {state['trials']} trials ({state['searcher']}), "
        f"maximising `{state['metric']}`."
    )
    if summary is None:
        return head + "\n"
    m = summary["metrics"]
    lines = [
        head,
        "",
        f"Best trial: `{summary['trial_id']}` (run `{summary['trial_run_id']}`), round "
        f"{m['round']} of {m['num_rounds']}: mean {m['mean_test_acc']:.2%}, best "
        f"{m['best_test_acc']:.2%}, ensemble {m['ensemble_test_acc']:.2%}.",
        "",
        f"Its settings: `{flags(summary['config'])}`",
    ]
    if summary.get("registered"):
        lines += ["", f"Its best network is registered as {summary['registered']}."]
    return "\n".join(lines) + "\n"
