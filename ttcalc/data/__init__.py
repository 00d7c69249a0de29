"""Reference data as ASE Atoms in eV and Å: rMD17, extended XYZ / ASE databases, element
reference energies, prior labels (cached) and train/validation splits."""
from ttcalc.data.frames import frame_energies, split_frames, with_labels
from ttcalc.data.labels import label_with_prior
from ttcalc.data.readers import read_frames
from ttcalc.data.references import composition_matrix, fit_element_constants, fit_element_references, reference_energy
from ttcalc.data.rmd17 import RMD17_MOLECULES, RMD17_SPLITS, Rmd17Arrays, load_rmd17, rmd17_arrays, rmd17_file

__all__ = [
    "RMD17_MOLECULES",
    "RMD17_SPLITS",
    "Rmd17Arrays",
    "composition_matrix",
    "fit_element_constants",
    "fit_element_references",
    "frame_energies",
    "label_with_prior",
    "load_rmd17",
    "read_frames",
    "reference_energy",
    "rmd17_arrays",
    "rmd17_file",
    "split_frames",
    "with_labels",
]
