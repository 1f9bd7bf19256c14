"""US geography the quiet-hours rules need: states' time zones and phone area codes (NANPA, 2024).

Data only. A state that spans zones lists all of them; the bot then sends only when the time is allowed in
every one, which is the safe reading of "the lead's local time" when the exact zone is unknown.
"""

from __future__ import annotations

E, C, M, AZ, P = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
)
AK, HI = "America/Anchorage", "Pacific/Honolulu"

# Every zone a US lead may be in, for leads whose state and zone are both unknown.
ALL_US_ZONES: tuple[str, ...] = (E, C, M, AZ, P, AK, HI)

STATE_ZONES: dict[str, tuple[str, ...]] = {
    "AL": (C,),
    "AK": (AK,),
    "AZ": (AZ,),
    "AR": (C,),
    "CA": (P,),
    "CO": (M,),
    "CT": (E,),
    "DE": (E,),
    "DC": (E,),
    "FL": (E, C),
    "GA": (E,),
    "HI": (HI,),
    "ID": (M, P),
    "IL": (C,),
    "IN": (E, C),
    "IA": (C,),
    "KS": (C, M),
    "KY": (E, C),
    "LA": (C,),
    "ME": (E,),
    "MD": (E,),
    "MA": (E,),
    "MI": (E, C),
    "MN": (C,),
    "MS": (C,),
    "MO": (C,),
    "MT": (M,),
    "NE": (C, M),
    "NV": (P,),
    "NH": (E,),
    "NJ": (E,),
    "NM": (M,),
    "NY": (E,),
    "NC": (E,),
    "ND": (C, M),
    "OH": (E,),
    "OK": (C,),
    "OR": (P, M),
    "PA": (E,),
    "RI": (E,),
    "SC": (E,),
    "SD": (C, M),
    "TN": (E, C),
    "TX": (C, M),
    "UT": (M,),
    "VT": (E,),
    "VA": (E,),
    "WA": (P,),
    "WV": (E,),
    "WI": (C,),
    "WY": (M,),
    "PR": ("America/Puerto_Rico",),
}

STATE_NAMES: dict[str, str] = {
    "alabama": "AL",
    "alaska": "AK",
    "arizona": "AZ",
    "arkansas": "AR",
    "california": "CA",
    "colorado": "CO",
    "connecticut": "CT",
    "delaware": "DE",
    "district of columbia": "DC",
    "florida": "FL",
    "georgia": "GA",
    "hawaii": "HI",
    "idaho": "ID",
    "illinois": "IL",
    "indiana": "IN",
    "iowa": "IA",
    "kansas": "KS",
    "kentucky": "KY",
    "louisiana": "LA",
    "maine": "ME",
    "maryland": "MD",
    "massachusetts": "MA",
    "michigan": "MI",
    "minnesota": "MN",
    "mississippi": "MS",
    "missouri": "MO",
    "montana": "MT",
    "nebraska": "NE",
    "nevada": "NV",
    "new hampshire": "NH",
    "new jersey": "NJ",
    "new mexico": "NM",
    "new york": "NY",
    "north carolina": "NC",
    "north dakota": "ND",
    "ohio": "OH",
    "oklahoma": "OK",
    "oregon": "OR",
    "pennsylvania": "PA",
    "rhode island": "RI",
    "south carolina": "SC",
    "south dakota": "SD",
    "tennessee": "TN",
    "texas": "TX",
    "utah": "UT",
    "vermont": "VT",
    "virginia": "VA",
    "washington": "WA",
    "west virginia": "WV",
    "wisconsin": "WI",
    "wyoming": "WY",
    "puerto rico": "PR",
}

_AREA_CODES_BY_STATE: dict[str, str] = {
    "AL": "205 251 256 334 659 938",
    "AK": "907",
    "AZ": "480 520 602 623 928",
    "AR": "327 479 501 870",
    "CA": "209 213 279 310 323 341 350 369 408 415 424 442 510 530 559 562 619 626 628 650 657 661 669 "
    "707 714 747 760 805 818 820 831 840 858 909 916 925 949 951",
    "CO": "303 719 720 970 983",
    "CT": "203 475 860 959",
    "DE": "302",
    "DC": "202 771",
    "FL": "239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 850 863 904 941 954",
    "GA": "229 404 470 478 678 706 762 770 912 943",
    "HI": "808",
    "ID": "208 986",
    "IL": "217 224 309 312 331 447 464 618 630 708 730 773 779 815 847 861 872",
    "IN": "219 260 317 463 574 765 812 930",
    "IA": "319 515 563 641 712",
    "KS": "316 620 785 913",
    "KY": "270 364 502 606 859",
    "LA": "225 318 337 504 985",
    "ME": "207",
    "MD": "227 240 301 410 443 667",
    "MA": "339 351 413 508 617 774 781 857 978",
    "MI": "231 248 269 313 517 586 616 679 734 810 906 947 989",
    "MN": "218 320 507 612 651 763 952",
    "MS": "228 601 662 769",
    "MO": "235 314 417 557 573 636 660 816 975",
    "MT": "406",
    "NE": "308 402 531",
    "NV": "702 725 775",
    "NH": "603",
    "NJ": "201 551 609 640 732 848 856 862 908 973",
    "NM": "505 575",
    "NY": "212 315 329 332 347 363 516 518 585 607 624 631 646 680 716 718 838 845 914 917 929 934",
    "NC": "252 336 472 704 743 828 910 919 980 984",
    "ND": "701",
    "OH": "216 220 234 283 326 330 380 419 436 440 513 567 614 740 937",
    "OK": "405 539 572 580 918",
    "OR": "458 503 541 971",
    "PA": "215 223 267 272 412 445 484 570 582 610 717 724 814 835 878",
    "RI": "401",
    "SC": "803 821 839 843 854 864",
    "SD": "605",
    "TN": "423 615 629 731 865 901 931",
    "TX": "210 214 254 281 325 346 361 409 430 432 469 512 682 713 726 737 806 817 830 832 903 915 936 "
    "940 945 956 972 979",
    "UT": "385 435 801",
    "VT": "802",
    "VA": "276 434 540 571 686 703 757 804 826 948",
    "WA": "206 253 360 425 509 564",
    "WV": "304 681",
    "WI": "262 274 353 414 534 608 715 920",
    "WY": "307",
    "PR": "787 939",
}

AREA_CODE_STATE: dict[str, str] = {
    code: state for state, codes in _AREA_CODES_BY_STATE.items() for code in codes.split()
}


def normalize_state(value: str | None) -> str | None:
    """'fl', 'Florida', ' FL ' -> 'FL'; anything unknown -> None."""
    if not value:
        return None
    text = value.strip()
    if text.upper() in STATE_ZONES:
        return text.upper()
    return STATE_NAMES.get(text.lower())


def area_code_state(phone: str | None) -> str | None:
    """The state of a US (+1) phone number's area code, or None."""
    if not phone:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    if len(digits) != 10:
        return None
    return AREA_CODE_STATE.get(digits[:3])
