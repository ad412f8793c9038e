package fsm

// SkipRedo switches the deliberate bug skipRedo (for the external tests).
var SkipRedo = &skipRedo
