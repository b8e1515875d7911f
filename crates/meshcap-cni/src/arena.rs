//! The plugin's allocator: a bump arena in `.bss`, with the system allocator behind it.
//!
//! `meshcap-cni` lives for a few milliseconds per pod start and allocates a few hundred KiB
//! at most (the decoded configuration, the model, one netlink batch, the result). A general
//! allocator spends that time on bookkeeping and on the kernel: musl's returns memory with
//! `munmap` as soon as a group empties (about a hundred mmap/munmap calls per ADD), glibc's
//! probes the CPU with `cpuid` at startup (a hypervisor exit per call in a VM). Bumping a
//! pointer through zero pages the kernel maps on first touch costs neither. Freeing gives the
//! memory back only for the most recent allocation (the common grow-a-`Vec` pattern); the
//! rest is returned when the process exits. Requests that do not fit go to the system
//! allocator, so a large input degrades to the usual allocator instead of failing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Far above what one ADD, DEL, CHECK or GC needs; untouched pages cost nothing.
pub const PLUGIN_ARENA_BYTES: usize = 8 << 20;

#[repr(C, align(4096))]
struct Bytes<const N: usize>(UnsafeCell<[u8; N]>);

/// `N` bytes to hand out (a `static`, so they live in `.bss`).
pub struct Arena<const N: usize> {
    bytes: Bytes<N>,
    /// Offset of the first free byte.
    next: AtomicUsize,
    /// Offset past every byte ever handed out: the bytes from here on are still the zero pages
    /// of `.bss`, untouched, so a zeroed allocation there needs no writing (and no page
    /// faults for pages nobody reads).
    high_water: AtomicUsize,
}

// SAFETY: the bytes are handed out in disjoint ranges claimed with compare-and-swap on `next`,
// so no two threads ever get the same byte.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    pub const fn new() -> Self {
        Arena {
            bytes: Bytes(UnsafeCell::new([0; N])),
            next: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.bytes.0.get() as usize
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + N
    }

    /// Claims `layout` from the arena; null when it does not fit.
    fn bump(&self, layout: Layout) -> *mut u8 {
        self.bump_fresh(layout).0
    }

    /// [`Arena::bump`], and how many of the claimed bytes (from its start) may have been
    /// handed out before; the rest are untouched zero bytes.
    fn bump_fresh(&self, layout: Layout) -> (*mut u8, usize) {
        let base = self.base();
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            // `align` is a power of two; the arena is 4096-aligned, so aligning the offset
            // aligns the address for every alignment up to a page.
            let Some(start) = next.checked_add(layout.align() - 1) else {
                return (std::ptr::null_mut(), 0);
            };
            let start = start & !(layout.align() - 1);
            let end = match start.checked_add(layout.size()) {
                Some(end) if end <= N && layout.align() <= 4096 => end,
                _ => return (std::ptr::null_mut(), 0),
            };
            match self
                .next
                .compare_exchange_weak(next, end, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    // Bytes come back only through `dealloc`, after the call that handed them
                    // out raised the mark past them; its Release and this Acquire on `next`
                    // order that raise before this read.
                    let seen = self.high_water.fetch_max(end, Ordering::AcqRel);
                    let used = seen.clamp(start, end) - start;
                    return ((base + start) as *mut u8, used);
                }
                Err(now) => next = now,
            }
        }
    }
}

// SAFETY: every pointer returned is either from `bump` (a range of the arena no one else
// holds, aligned and sized for `layout`) or from `System`; `dealloc`/`realloc` route each
// pointer back to where it came from by address.
unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.bump(layout);
        if p.is_null() {
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        } else {
            p
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (p, used) = self.bump_fresh(layout);
        if p.is_null() {
            // SAFETY: same contract as ours.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // Only bytes handed out before (a freed tail given again) can be other than zero.
        // SAFETY: `p` is valid for `layout.size()` bytes, and `used` is at most that.
        unsafe { std::ptr::write_bytes(p, 0, used) };
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: not ours, so `System` allocated it with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        // Only the most recent allocation can be given back.
        let start = ptr as usize - self.base();
        let _ = self.next.compare_exchange(
            start + layout.size(),
            start,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: not ours, so `System` allocated it with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // The most recent allocation grows or shrinks in place.
        let start = ptr as usize - self.base();
        if let Some(end) = start.checked_add(new_size).filter(|&e| e <= N) {
            if self
                .next
                .compare_exchange(
                    start + layout.size(),
                    end,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.high_water.fetch_max(end, Ordering::AcqRel);
                return ptr;
            }
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `layout.align()` is a valid alignment and `new_size` is non-zero (it is
        // larger than the old size).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for the old size and do not overlap (the new
            // one was just claimed).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SMALL: Arena<4096> = Arena::new();

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn aligns_grows_in_place_and_falls_back_to_the_system() {
        // One test owns SMALL, so the offsets below are deterministic.
        unsafe {
            let a = SMALL.alloc(layout(3, 1));
            assert!(SMALL.owns(a));
            let b = SMALL.alloc(layout(16, 16));
            assert_eq!(b as usize % 16, 0, "aligned");
            assert!(b as usize >= a as usize + 3, "disjoint");
            b.write_bytes(0xab, 16);

            // The most recent allocation grows in place and keeps its bytes.
            let grown = SMALL.realloc(b, layout(16, 16), 64);
            assert_eq!(grown, b);
            assert_eq!(*grown.add(15), 0xab);

            // An older one moves, with its bytes.
            a.write_bytes(7, 3);
            let moved = SMALL.realloc(a, layout(3, 1), 32);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 3), &[7, 7, 7]);

            // Freeing the tail gives its bytes back to the next allocation.
            SMALL.dealloc(moved, layout(32, 1));
            let again = SMALL.alloc_zeroed(layout(32, 1));
            assert_eq!(again, moved);
            assert!(std::slice::from_raw_parts(again, 32)
                .iter()
                .all(|&x| x == 0));

            // A zeroed block over bytes used before and bytes never handed out: all zero.
            let used = SMALL.alloc(layout(64, 1));
            used.write_bytes(0xff, 64);
            SMALL.dealloc(used, layout(64, 1));
            let zeroed = SMALL.alloc_zeroed(layout(256, 1));
            assert_eq!(zeroed, used);
            assert!(std::slice::from_raw_parts(zeroed, 256)
                .iter()
                .all(|&x| x == 0));
            SMALL.dealloc(zeroed, layout(256, 1));

            // Too big for what is left: the system allocator serves it, and takes it back.
            let big = SMALL.alloc(layout(8192, 8));
            assert!(!big.is_null() && !SMALL.owns(big));
            let big = SMALL.realloc(big, layout(8192, 8), 16384);
            assert!(!big.is_null() && !SMALL.owns(big));
            SMALL.dealloc(big, layout(16384, 8));

            // Growing an arena block beyond the arena moves it to the system allocator.
            let last = SMALL.alloc(layout(8, 8));
            let out = SMALL.realloc(last, layout(8, 8), 1 << 20);
            assert!(!out.is_null() && !SMALL.owns(out));
            SMALL.dealloc(out, layout(1 << 20, 8));
        }
    }
}
