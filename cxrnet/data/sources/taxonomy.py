"""Finding names → pathogen family, so that a collection's growing vocabulary maps without code changes.

Public CXR collections name findings by disease, by organism, or both, and every release adds names:
the covid-chestxray-dataset has flat ``Streptococcus``, ``Mycoplasma Bacterial Pneumonia``, ``COVID-19,
ARDS`` and hierarchical ``Pneumonia/Bacterial/Klebsiella``. A label map listing every name falls behind;
this table maps by taxonomy instead: a finding that *is* a known pathogen, or contains one as a word, maps to
that pathogen's family, and the family is then looked up in the dataset's label map like any other name.

The families and the words that identify them (matched case-insensitively as whole words; ``-`` and ``.``
belong to a word, so ``SARS-CoV-2`` and ``E.Coli`` are one word each):

======================  ===========================================================================
family (label-map key)  words
======================  ===========================================================================
``COVID-19``            COVID-19, COVID19, COVID, SARS-CoV-2, 2019-nCoV, nCoV
``Viral``               Viral, Virus, SARS, SARS-CoV, MERS, MERS-CoV, Influenza, H1N1, H3N2, H5N1,
                        Herpes, Varicella, VZV, RSV, Adenovirus, Rhinovirus, Parainfluenza,
                        Metapneumovirus, Cytomegalovirus, CMV, Measles, Hantavirus
``Bacterial``           Bacterial, Bacteria, Streptococcus, Pneumococcus, Pneumococcal,
                        Staphylococcus, MRSA, MSSA, Klebsiella, Legionella, Mycoplasma, Chlamydophila,
                        Chlamydia, E.Coli, Escherichia, Haemophilus, Hemophilus, Pseudomonas,
                        Moraxella, Nocardia, Actinomyces, Enterobacter, Acinetobacter, Bordetella,
                        Serratia, Proteus, Anaerobic, Fusobacterium
``Fungal``              Fungal, Fungus, Pneumocystis, PCP, PJP, Aspergillus, Aspergillosis, Candida,
                        Candidiasis, Cryptococcus, Cryptococcal, Histoplasma, Histoplasmosis,
                        Coccidioides, Coccidioidomycosis, Mucor, Mucormycosis, Blastomyces
``Tuberculosis``        Tuberculosis, TB, Mycobacterium, Mycobacterial
======================  ===========================================================================

A finding naming no pathogen (``Pneumonia``, ``ARDS``, ``Lipoid``, ``todo``) has no family; its reader's label
map decides, and a name in neither is reported as an unknown label. When a finding names several families,
the most specific decides: COVID-19 first, then a named organism (in reading order), then a generic word
(``Viral``, ``Bacterial``, ...): ``Viral pneumonia (SARS-CoV-2)`` is COVID-19, ``Bacterial superinfection
after Influenza`` is viral. ``Haemophilus influenzae`` is bacterial: ``influenzae`` is not ``influenza``.
"""

from __future__ import annotations

import re

__all__ = ["FAMILY_WORDS", "families", "family"]

FAMILY_WORDS: dict[str, tuple[str, ...]] = {
    "COVID-19": ("COVID-19", "COVID19", "COVID", "SARS-CoV-2", "2019-nCoV", "nCoV"),
    "Viral": (
        "Viral", "Virus", "SARS", "SARS-CoV", "MERS", "MERS-CoV", "Influenza", "H1N1", "H3N2", "H5N1",
        "Herpes", "Varicella", "VZV", "RSV", "Adenovirus", "Rhinovirus", "Parainfluenza", "Metapneumovirus",
        "Cytomegalovirus", "CMV", "Measles", "Hantavirus",
    ),
    "Bacterial": (
        "Bacterial", "Bacteria", "Streptococcus", "Pneumococcus", "Pneumococcal", "Staphylococcus", "MRSA",
        "MSSA", "Klebsiella", "Legionella", "Mycoplasma", "Chlamydophila", "Chlamydia", "E.Coli",
        "Escherichia", "Haemophilus", "Hemophilus", "Pseudomonas", "Moraxella", "Nocardia", "Actinomyces",
        "Enterobacter", "Acinetobacter", "Bordetella", "Serratia", "Proteus", "Anaerobic", "Fusobacterium",
    ),
    "Fungal": (
        "Fungal", "Fungus", "Pneumocystis", "PCP", "PJP", "Aspergillus", "Aspergillosis", "Candida",
        "Candidiasis", "Cryptococcus", "Cryptococcal", "Histoplasma", "Histoplasmosis", "Coccidioides",
        "Coccidioidomycosis", "Mucor", "Mucormycosis", "Blastomyces",
    ),
    "Tuberculosis": ("Tuberculosis", "TB", "Mycobacterium", "Mycobacterial"),
}  # fmt: skip
"""Family name (the key a label map gives a class) → the words that identify it; see the module docstring."""

_GENERIC = frozenset(w.casefold() for w in ("Viral", "Virus", "Bacterial", "Bacteria", "Fungal", "Fungus"))
_WORD_FAMILY = {word.casefold(): name for name, words in FAMILY_WORDS.items() for word in words}
_WORD = re.compile(r"[0-9A-Za-z][0-9A-Za-z.\-]*")


def _words(finding: str) -> list[str]:
    return [word.rstrip(".-").casefold() for word in _WORD.findall(finding)]


def families(finding: str) -> list[str]:
    """The families named in ``finding``, in reading order, each once (``[]`` when it names no pathogen).

    >>> families("Mycoplasma Bacterial Pneumonia")
    ['Bacterial']
    >>> families("Pneumonia/Viral/Influenza/H1N1")
    ['Viral']
    """
    return list(dict.fromkeys(_WORD_FAMILY[w] for w in _words(finding) if w in _WORD_FAMILY))


def family(finding: str) -> str | None:
    """The most specific family named in ``finding`` (see the module docstring), or ``None``.

    >>> family("Pneumonia/Viral/SARS-CoV-2")
    'COVID-19'
    >>> family("Lipoid")
    """
    words = [w for w in _words(finding) if w in _WORD_FAMILY]
    named = [_WORD_FAMILY[w] for w in words]
    if "COVID-19" in named:
        return "COVID-19"
    specific = [_WORD_FAMILY[w] for w in words if w not in _GENERIC]
    return (specific or named or [None])[0]
