"""The joint diffusion classifier (a diffusers UNet whose encoder features feed a classifier head)
shared by the Mediffusion and JDCL recipes: :mod:`.model`, :mod:`.hub`, :mod:`.train`."""
