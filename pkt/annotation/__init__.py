"""Blind annotation of run outputs: packets for annotators, validation and agreement figures.

The command line is ``python -m pkt.annotate`` (see :mod:`pkt.annotate`); the pieces are

* :mod:`pkt.annotation.packet`: sample answers from run directories into a blind packet,
  a rubric and a separate key;
* :mod:`pkt.annotation.ratings`: read and validate one annotator's ratings file;
* :mod:`pkt.annotation.stats`: Spearman, weighted Cohen's kappa, Krippendorff's alpha;
* :mod:`pkt.annotation.summary`: the per-condition figures, ``annotation.md/.json/.png``.
"""
