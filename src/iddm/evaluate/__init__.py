"""The attacker's view: linkability metrics, image quality and platform degradations (DESIGN.md §3)."""
