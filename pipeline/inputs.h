// Where the transform stage finds an item's input bytes. With `--io mmap` (the default) they are
// read in place from the file maps; with `--io pread` the read stage first copies, with a few
// large positional reads, exactly the input rows (and scale-grid rows) the item needs into a
// buffer that is reused from item to item. The transform asks for element (row, col) of a piece
// and gets a pointer either way, so the numerics never know which I/O mode ran.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "pipeline/plan.h"

namespace ckpt {

enum class IoMode : uint8_t { Mmap, Pread };

// Whole-row bands that two items read: the gate and up halves of a fused expert tensor (`--to
// hf` from a native checkpoint) each need every row of it, half of each row, and a band that wide
// is read whole. The first reader of a band claims it and, once read, shares its buffer; the
// second — waiting if the first is still reading — takes that buffer instead of reading (for a
// remote input: fetching) the rows again, and without a copy. Bounded: past `capacity` bytes the
// oldest shared bands are forgotten (their readers keep them as long as they need them).
class BandCache {
 public:
  using Bytes = std::shared_ptr<const uint8_t>;
  explicit BandCache(uint64_t capacity) : capacity_(capacity) {}
  // Whether a band of `len` bytes can be shared at all (larger ones are read by each item).
  bool shares(uint64_t len) const { return len <= capacity_; }
  // A buffer of `len` bytes to read a claimed band into. The buffers of bands no item holds any
  // more are reused (up to `capacity` bytes of them): fresh memory costs a page fault per 4 KiB,
  // and the allocator hands large blocks back to the kernel (at 2 threads, 120 000 faults in a
  // 4 GB export). The cache must outlive every buffer it gave out.
  std::shared_ptr<uint8_t> buffer(uint64_t len);
  // The band at `offset` of `f` as another item read it, forgotten here; or null, making the
  // caller its reader, who then calls `keep` with the bytes — or `abandon` if the read failed.
  Bytes take_or_claim(const InputFile& f, uint64_t offset, uint64_t len);
  void keep(const InputFile& f, uint64_t offset, uint64_t len, Bytes bytes);
  void abandon(const InputFile& f, uint64_t offset, uint64_t len);

 private:
  struct Band {
    const InputFile* file;
    uint64_t offset, len;
    Bytes bytes;  // null while its reader is at it
  };
  struct Spare {
    std::unique_ptr<uint8_t[]> bytes;
    uint64_t len;
  };
  std::list<Band>::iterator find(const InputFile& f, uint64_t offset, uint64_t len);
  void recycle(uint8_t* bytes, uint64_t len);
  std::mutex mu_;
  std::vector<Spare> spare_;
  uint64_t spare_bytes_ = 0;
  std::condition_variable read_;
  std::list<Band> bands_;  // oldest first
  uint64_t bytes_ = 0, capacity_;
};

class ItemInputs {
 public:
  // `bands`: shared by the items of a run, so that a whole-row band is read once (may be null).
  explicit ItemInputs(BandCache* bands = nullptr) : bands_(bands) {}

  // Reads (pread) every input byte that output elements [first, last) of `t` need. Until
  // `stage` is called, or after `unstage`, pointers go into the maps.
  void stage(const PlannedTensor& t, uint64_t first, uint64_t last);
  void unstage() {
    regions_.clear();
    shared_.clear();
  }
  bool staged() const { return !regions_.empty(); }

  // Input element (row, col) of piece `i` of the staged tensor (row and col in the input matrix).
  const uint8_t* input(const Piece& p, size_t i, uint64_t row, uint64_t col) const;
  // Bytes from one input row of piece `i` to the next, mapped or staged.
  uint64_t row_bytes(const Piece& p, size_t i) const;
  // The first scale of grid row `grid_row` of piece `i`.
  const uint8_t* scale_row(const Piece& p, size_t i, uint64_t grid_row) const;
  // A copied tensor's bytes for output elements from `first` on.
  const uint8_t* copy_bytes(const PlannedTensor& t, uint64_t first) const;

  uint64_t bytes_read() const { return bytes_read_; }

 private:
  // A staged rectangle: input rows from `row0`, columns from `col0`, `stride` bytes apart.
  struct Region {
    uint64_t at = 0;                  // offset in buf_ ...
    const uint8_t* shared = nullptr;  // ... unless it is a band of the cache's
    uint64_t row0 = 0, col0 = 0, stride = 0;
  };
  const uint8_t* start(const Region& r) const { return r.shared ? r.shared : buf_.data() + r.at; }
  // Reads rows [r0, r1) × columns [c0, c1) of a row-major matrix at `tensor_offset` of `f`.
  Region read(const InputFile& f, uint64_t tensor_offset, uint64_t in_cols, uint64_t es, uint64_t r0, uint64_t r1,
              uint64_t c0, uint64_t c1);
  Region shared_band(const InputFile& f, uint64_t at, uint64_t bytes, Region r);
  BandCache* bands_;
  std::vector<Region> regions_;  // per piece: input, then scale (when it has one)
  std::vector<uint8_t> buf_;
  std::vector<BandCache::Bytes> shared_;  // the cache's bands the regions point into
  std::vector<InputFile::Range> ranges_;  // the rows of a narrow band, reused from read to read
  uint64_t used_ = 0, bytes_read_ = 0;
};

}  // namespace ckpt
