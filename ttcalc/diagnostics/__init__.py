"""Diagnostics of distribution shift and of what adaptation did, as functions of structures and models.

- ``spectral``: Laplacian spectra of atomic graphs and radius refinement's spectral match
  (Kreiman & Krishnapriyan 2025, sec. 4);
- ``shifts``: connectivity, element, force-norm and spectral shift checks of a structure against a
  model's training set (``diagnose``);
- ``uncertainty``: Q-residuals of the representation in principal-component space (Wong & Yang 2026);
- ``collapse``: representation-collapse measures, W₁ and the Davies–Bouldin index (Peng et al. 2026);
- ``evaluation``: force and energy errors of a calculator or model on labelled frames.

They sit below ``train``: training stores the spectrum and the uncertainty model in checkpoints.
"""
