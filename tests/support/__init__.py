"""What tests share besides fixtures: helpers (``stores``), a fault-injecting file system
(``faultfs``) and the power-loss simulator (``powersim``)."""
