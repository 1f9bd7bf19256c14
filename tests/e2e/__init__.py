"""Outside-in tier: ``lead-bot serve`` judged only by what reaches the fake GHL and Retell, in virtual
time."""
