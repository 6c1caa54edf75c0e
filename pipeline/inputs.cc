#include "pipeline/inputs.h"

#include <algorithm>

namespace ckpt {

std::list<BandCache::Band>::iterator BandCache::find(const InputFile& f, uint64_t offset, uint64_t len) {
  return std::find_if(bands_.begin(), bands_.end(),
                      [&](const Band& b) { return b.file == &f && b.offset == offset && b.len == len; });
}

BandCache::Bytes BandCache::take_or_claim(const InputFile& f, uint64_t offset, uint64_t len) {
  if (!shares(len)) return nullptr;  // never kept: a second reader must not wait for it
  std::unique_lock lock(mu_);
  for (;;) {
    const auto it = find(f, offset, len);
    if (it == bands_.end()) {
      bands_.push_back({&f, offset, len, nullptr});
      return nullptr;
    }
    if (!it->bytes) {  // its reader is at it: wait, then look again (it may have given up)
      read_.wait(lock);
      continue;
    }
    Bytes b = std::move(it->bytes);
    bytes_ -= it->len;
    bands_.erase(it);
    return b;
  }
}

std::shared_ptr<uint8_t> BandCache::buffer(uint64_t len) {
  std::unique_ptr<uint8_t[]> bytes;
  uint64_t size = len;
  {
    std::lock_guard lock(mu_);
    auto best = spare_.end();  // the smallest spare that holds len
    for (auto it = spare_.begin(); it != spare_.end(); ++it)
      if (it->len >= len && (best == spare_.end() || it->len < best->len)) best = it;
    if (best != spare_.end()) {
      bytes = std::move(best->bytes);
      size = best->len;
      spare_bytes_ -= size;
      spare_.erase(best);
    }
  }
  if (!bytes) bytes.reset(new uint8_t[len]);  // uninitialised: a read fills it
  return {bytes.release(), [this, size](uint8_t* p) { recycle(p, size); }};
}

void BandCache::recycle(uint8_t* bytes, uint64_t len) {
  std::unique_ptr<uint8_t[]> owned(bytes);
  std::lock_guard lock(mu_);
  if (spare_bytes_ + len > capacity_) return;
  spare_.push_back({std::move(owned), len});
  spare_bytes_ += len;
}

void BandCache::keep(const InputFile& f, uint64_t offset, uint64_t len, Bytes bytes) {
  std::lock_guard lock(mu_);
  const auto it = find(f, offset, len);
  if (it == bands_.end()) return;  // a band too large to keep was never claimed
  for (auto old = bands_.begin(); bytes_ + len > capacity_ && old != bands_.end();) {
    if (old->bytes) {
      bytes_ -= old->len;
      old = bands_.erase(old);
    } else {
      ++old;
    }
  }
  it->bytes = std::move(bytes);
  bytes_ += len;
  read_.notify_all();
}

void BandCache::abandon(const InputFile& f, uint64_t offset, uint64_t len) {
  std::lock_guard lock(mu_);
  if (const auto it = find(f, offset, len); it != bands_.end() && !it->bytes) bands_.erase(it);
  read_.notify_all();
}

ItemInputs::Region ItemInputs::read(const InputFile& f, uint64_t tensor_offset, uint64_t in_cols, uint64_t es,
                                    uint64_t r0, uint64_t r1, uint64_t c0, uint64_t c1) {
  const uint64_t width = c1 - c0;
  // A band at least half as wide as the rows is read as whole rows, gaps and all: one large read
  // beats many short ones. Narrower bands (a slice of each row) are read row by row, packed.
  const bool whole = 2 * width >= in_cols;
  Region r{used_, nullptr, r0, whole ? 0 : c0, (whole ? in_cols : width) * es};
  const uint64_t bytes = (r1 - r0) * r.stride;
  if (whole && bands_ && width < in_cols && bands_->shares(bytes))
    return shared_band(f, tensor_offset + r0 * in_cols * es, bytes, r);
  if (buf_.size() < used_ + bytes) buf_.resize(used_ + bytes);
  uint8_t* dst = buf_.data() + used_;
  used_ += bytes;
  if (whole) {
    f.read(tensor_offset + r0 * in_cols * es, bytes, dst);
  } else {
    ranges_.clear();
    for (uint64_t row = r0; row < r1; ++row, dst += r.stride)
      ranges_.push_back({tensor_offset + (row * in_cols + c0) * es, r.stride, dst});
    f.read_many(ranges_);
  }
  bytes_read_ += bytes;
  return r;
}

// Rows read for part of their width: the item that needs the rest shares them (BandCache).
ItemInputs::Region ItemInputs::shared_band(const InputFile& f, uint64_t at, uint64_t bytes, Region r) {
  BandCache::Bytes band = bands_->take_or_claim(f, at, bytes);
  if (!band) {
    std::shared_ptr<uint8_t> fresh = bands_->buffer(bytes);
    try {
      f.read(at, bytes, fresh.get());
    } catch (...) {
      bands_->abandon(f, at, bytes);
      throw;
    }
    bytes_read_ += bytes;
    band = std::move(fresh);
    bands_->keep(f, at, bytes, band);
  }
  r.shared = band.get();
  shared_.push_back(std::move(band));
  return r;
}

void ItemInputs::stage(const PlannedTensor& t, uint64_t first, uint64_t last) {
  unstage();
  used_ = 0;
  if (t.is_copy()) {  // a flat run of bytes (copies are cut on whole bytes, sub-byte dtypes too)
    const Piece& p = t.pieces[0];
    const DType d = p.input.info->dtype;
    const uint64_t at = elements_bytes(d, first), n = elements_bytes(d, last) - at;
    regions_.push_back(read(p.input.file->source(), p.input.file->file_offset(*p.input.info) + at, n, 1, 0, 1, 0, n));
    return;
  }
  regions_.resize(2 * t.pieces.size());  // per piece: input, scale
  for (size_t i = 0; i < t.pieces.size(); ++i) {
    const Piece& p = t.pieces[i];
    const InputRect r = input_rect(t, p, first, last);
    if (r.empty()) continue;
    const uint64_t a = r.row0, b = r.row1, c0 = r.col0, c1 = r.col1;
    const auto& in = *p.input.file;
    regions_[2 * i] =
        read(in.source(), in.file_offset(*p.input.info), p.in_cols, dtype_size(p.input.info->dtype), a, b, c0, c1);
    if (!p.scale.info) continue;
    const DequantScheme& d = p.scheme;
    const auto& sf = *p.scale.file;
    regions_[2 * i + 1] = read(sf.source(), sf.file_offset(*p.scale.info), d.grid_cols, dtype_size(p.scale.info->dtype),
                               a / d.block_rows, (b - 1) / d.block_rows + 1, 0, d.grid_cols);
  }
}

const uint8_t* ItemInputs::input(const Piece& p, size_t i, uint64_t row, uint64_t col) const {
  const uint64_t es = dtype_size(p.input.info->dtype);
  if (regions_.empty()) return p.input.file->data(*p.input.info) + (row * p.in_cols + col) * es;
  const Region& r = regions_[2 * i];
  return start(r) + (row - r.row0) * r.stride + (col - r.col0) * es;
}

uint64_t ItemInputs::row_bytes(const Piece& p, size_t i) const {
  return regions_.empty() ? p.in_cols * dtype_size(p.input.info->dtype) : regions_[2 * i].stride;
}

const uint8_t* ItemInputs::scale_row(const Piece& p, size_t i, uint64_t grid_row) const {
  if (regions_.empty())
    return p.scale.file->data(*p.scale.info) + grid_row * p.scheme.grid_cols * dtype_size(p.scale.info->dtype);
  const Region& r = regions_[2 * i + 1];
  return start(r) + (grid_row - r.row0) * r.stride;
}

const uint8_t* ItemInputs::copy_bytes(const PlannedTensor& t, uint64_t first) const {
  if (!regions_.empty()) return start(regions_[0]);
  const Piece& p = t.pieces[0];
  return p.input.file->data(*p.input.info) + elements_bytes(p.input.info->dtype, first);
}

}  // namespace ckpt
