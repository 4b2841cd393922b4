"""What every llmops card shares: artifacts read by name, names overridable by card options, and
Vega-Lite figures (figures.py) turned into card charts."""

from metaflow.exception import MetaflowException
from metaflow.plugins.cards.card_modules.basic import BlankCard


class CardOptionError(MetaflowException, ValueError):
    """An option an llmops card does not take; names the option and the ones it takes."""

    headline = "@card options"


def figure(spec):
    """A Vega-Lite spec (figures.py) as a card chart, drawn by the card viewer."""
    from metaflow.cards import VegaChart

    return VegaChart(spec)


def fmt(value, spec=".4f"):
    """A number for a table cell; blank for a missing one."""
    return "" if value is None else f"{value:{spec}}"


class ArtifactCard(BlankCard):
    """A card built from the task's artifacts.

    ``artifacts`` names the artifacts a card reads, as the project's flows name them. A flow that
    names one differently says so in the card's options, e.g.
    ``@card(type="llmops_eval", options={"eval_scores": "holdout_scores"})``; ``title`` may be set too.
    """

    type = None
    title = ""
    artifacts: tuple = ()
    # drawn once from the finished task's artifacts: no live updates while the step runs, so Metaflow
    # renders it once (BlankCard's True would start a second `card create` process per card)
    RUNTIME_UPDATABLE = False

    def __init__(self, options=None, components=None, graph=None, **kwargs):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.artifacts) - {"title"})
        if unknown:
            raise CardOptionError(
                f"@card(type={self.type!r}): unknown option(s) {unknown}; "
                f"it takes 'title' and artifact names {list(self.artifacts)}"
            )
        self._names = {name: options.get(name, name) for name in self.artifacts}
        title = options.get("title", self.title)
        super().__init__(options={"title": title}, components=[], graph=graph, **kwargs)

    def artifact(self, task, name, default=None):
        """The artifact this card calls ``name`` (renamed by the card's options), or ``default``."""
        actual = self._names[name]
        return task[actual].data if actual in task else default

    def render(self, task, components=None, runtime=False):
        return super().render(task, components=self.components(task), runtime=runtime)

    def components(self, task):
        raise NotImplementedError
