"""The paper's theory, run: §2 (stochastic quadratic problems, Fig. 2), §3 (Fig. 3, Lemma 1)
and §5 (the Wilson et al. construction, Lemmas 2-3).

Modules: ``quadratic`` (problem generator, Haar rotations), ``factors`` (Eq. 8-10, Lemma 1,
p_diag), ``orthant`` (bivariate normal orthant probabilities), ``steps`` (optimal local step
sizes, Eq. 12-14), ``fig2`` / ``claims`` (the Fig. 2 experiment and its caption check),
``fig3``, ``wilson``, ``plots`` and ``records`` (provenance). Entry points: ``scripts/fig2.py``,
``scripts/fig3.py``, ``scripts/wilson.py``; configs in ``conf/theory/``.
"""
