package placement

// Size is what is known of a model version's memory before it loads: the registry's
// declared bytes (0: none) and the footprint measured at an earlier load anywhere in the
// mesh (zero: never measured). The worker reserves by it and ext_proc places by it, with one
// rule (On), so the two always count a model alike.
type Size struct {
	Declared int64
	Learned  Footprint
}

// Known reports whether the size is declared or was measured.
func (s Size) Known() bool { return s.Declared > 0 || s.Learned.Total() > 0 }

// On is what a worker reserves for the model: the declared size, else the learned
// footprint; zero, with source "", when neither is known. gpus says whether the worker has
// GPUs: declared bytes are then GPU memory (runtimes put a model on a GPU when they have one).
func (s Size) On(gpus bool) (Footprint, SizeSource) {
	switch {
	case s.Declared > 0:
		return Bytes(s.Declared, gpus), SizeDeclared
	case s.Learned != Footprint{}:
		return s.Learned, SizeLearned
	}
	return Footprint{}, ""
}

// Bytes is a size known only as a byte count (declared, or estimated from the files) as a
// footprint: GPU memory on a worker with GPUs, host memory on one without.
func Bytes(n int64, gpus bool) Footprint {
	if gpus {
		return Footprint{GPU: n}
	}
	return Footprint{Host: n}
}
