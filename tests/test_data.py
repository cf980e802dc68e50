"""The project's labelled data: gold actor names are the gazetteer's canonical names."""

from __future__ import annotations

from pipeline.classify.dataset import article_files, heldout_files, load_articles
from pipeline.classify.evaluate import _name, canonical_names
from pipeline.config import AppConfig


def test_gold_actors_use_canonical_names() -> None:
    # A gold actor written as an alias ("S. Jaishankar") would be scored as a different
    # actor from the canonical one that classify reports; in b-0126 it had also been
    # labelled a second time under the canonical name.
    names = canonical_names(AppConfig().actors)
    aliased = []
    # data/heldout/ (never trained on; an extra evaluation set) follows the same rule.
    heldout = heldout_files()
    assert heldout, "data/heldout/articles is empty"
    for item in load_articles([*article_files(), *heldout]):
        for actor in {*item.actors, *(s.actor for s in item.stances)}:
            canonical = names.get(_name(actor))
            if canonical is not None and canonical != actor:
                aliased.append(f"{item.id}: {actor!r} is {canonical!r}")
    assert not aliased, aliased
