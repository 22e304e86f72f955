"""Markdown table of the accuracy runs in an MLflow store (see accuracy_runs.sh).

python benchmarks/accuracy_table.py runs/accuracy/mlflow.db

soup: the population's average weights as one network, BatchNorm re-estimated (at the run's
end, or later by python -m graftune.soup RUN_ID); "-" where the run has none.
* the best accuracy of any round, chosen on the test set (the authors' figure): optimistic.
"""

from __future__ import annotations

import sys

from mlflow.tracking import MlflowClient


def main() -> None:
    client = MlflowClient(f"sqlite:///{sys.argv[1]}")
    experiment = client.get_experiment_by_name("accuracy")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    print(
        "| run | status | rounds | per-network test acc (%) | mean | best | ensemble | soup "
        "| best over rounds* | wall (min) |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        metrics = run.data.metrics
        if "population/mean_test_acc" not in metrics:  # started, no round finished yet
            continue
        k = int(run.data.params["population/num_models"])
        nets = ", ".join(f"{100 * metrics[f'net{i}/test_acc']:.2f}" for i in range(k))
        rounds = len(client.get_metric_history(run.info.run_id, "population/mean_test_acc"))
        end = run.info.end_time or run.info.start_time
        over = metrics.get("population/best_test_acc_over_rounds")  # absent before issue 11
        over = "-" if over is None else f"{100 * over:.2f}"
        soup = metrics.get("population/soup_test_acc")  # the last logged: a rescore wins
        soup = "-" if soup is None else f"{100 * soup:.2f}"
        print(
            f"| {run.info.run_name} | {run.info.status} | {rounds} | {nets} | "
            f"{100 * metrics['population/mean_test_acc']:.2f} | "
            f"{100 * metrics['population/best_test_acc']:.2f} | "
            f"{100 * metrics['population/ensemble_test_acc']:.2f} | {soup} | {over} | "
            f"{(end - run.info.start_time) / 60000:.1f} |"
        )


if __name__ == "__main__":
    main()
