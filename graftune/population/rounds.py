"""Runs a population's rounds, synchronous or asynchronous: the one place that picks, so
that neither round module imports the other's driver back."""

from __future__ import annotations

from collections.abc import Callable

from graftune.population.async_rounds import run_async
from graftune.population.population import Population, RoundResult


def run_population(
    population: Population,
    first_round: int = 1,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Run rounds ``first_round``..num_rounds, calling ``on_round`` after each."""
    if population.config.population.asynchronous:
        return run_async(population, first_round, on_round)
    results = []
    for round_index in range(first_round, population.num_rounds + 1):
        result = population.run_round(round_index)
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results
