"""Weights both sides need, found and loaded: whether a download host answers, and open_clip models
(the study's CLIP score and the serving router's text encoder). Heavy imports happen inside functions.
"""
