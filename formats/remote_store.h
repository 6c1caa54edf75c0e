// A checkpoint behind HTTP(S) or in S3-compatible storage, opened where it lives: a folder URL
// (holding model.safetensors.index.json and its shards; an S3 folder may also be listed) or the
// URL of one .safetensors object. Every file is an InputFile whose reads are ranged GETs through
// one RemoteClient shared by the whole conversion (formats/remote_client.h); nothing is staged on
// local storage. An object's size and ETag are taken when it is first seen and every later read
// must find the same object; its identity for --resume is that ETag (or Last-Modified).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "formats/checkpoint_store.h"
#include "formats/remote_client.h"

namespace ckpt {

struct RemoteCheckpoint {
  std::shared_ptr<const CheckpointStore> store;
  std::optional<std::string> single_file;  // the object's name, when the URL names one
  std::shared_ptr<RemoteClient> client;    // for its statistics
};

// The store of `url` (a folder, or one object when it ends in .safetensors).
RemoteCheckpoint open_remote(const RemoteUrl& url, const RemoteOptions& options);

}  // namespace ckpt
