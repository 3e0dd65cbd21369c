"""Network segmentation: MUD (RFC 8520) profiles compiled to one nftables ruleset for the fleet.

See ``model`` for the values every part shares, ``mud`` for parsing, ``signature`` for CMS signature
checks, ``compiler`` and ``nftables`` for enforcement, ``simulation`` for what a policy would block,
and ``learning`` for profiles learned from observed traffic.
"""
