//! Parallel compression for backhand's sequential squashfs writer.
//!
//! backhand compresses one block after another on the calling thread. Which blocks it will
//! compress is known in advance, though: every block-sized chunk of each file of a block or
//! more (the last chunk included: backhand packs no tail ends), and the fragment blocks,
//! which pack the files smaller than a block, in backhand's write order, until the next
//! would not fit. [`Precompressed`] compresses those on all cores first (rayon) with
//! backhand's own compressor, and the writer then runs with [`MEMO`], which answers each
//! block from those results, found by content, and calls backhand's compressor for anything
//! else (metadata blocks, or a block the plan did not foresee). The image is therefore
//! byte for byte what the sequential writer makes; only the wall time differs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::{BackhandError, FilesystemCompressor, SuperBlock, kind::Kind};
use crust_format::Digest;
use rayon::prelude::*;

use crate::tree::{Node, Tree};

/// What identifies a compressed block: the compressor settings and the input's digest.
type Key = (String, Digest);

/// A compressed block and how many [`Precompressed`] sets hold it.
type Held = (usize, Arc<[u8]>);

/// Compressed blocks by content, shared by every build running in this process.
static BLOCKS: Mutex<BTreeMap<Key, Held>> = Mutex::new(BTreeMap::new());

/// The compressor the writer calls: a precompressed block if there is one, else backhand's.
pub static MEMO: Memo = Memo;

/// See [`MEMO`].
#[derive(Debug)]
pub struct Memo;

fn settings(fc: &FilesystemCompressor) -> String {
    format!("{fc:?}")
}

impl CompressionAction for Memo {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        compressor: Self::Compressor,
    ) -> Result<(), Self::Error> {
        DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: Self::FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, Self::Error> {
        let key = (settings(&fc), Digest::of(bytes));
        let found = BLOCKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map(|(_, data)| data.clone());
        match found {
            Some(data) => Ok(data.to_vec()),
            None => DefaultCompressor.compress(bytes, fc, block_size),
        }
    }

    fn compression_options(
        &self,
        superblock: &mut Self::SuperBlock,
        kind: &Kind,
        fs_compressor: Self::FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        DefaultCompressor.compression_options(superblock, kind, fs_compressor)
    }
}

/// A tree's blocks compressed ahead of the writer; they stay available to [`MEMO`] until
/// this is dropped.
#[derive(Debug)]
pub struct Precompressed {
    keys: Vec<Key>,
}

impl Precompressed {
    /// Compresses, on all cores, the blocks the writer will ask for when it writes `tree`
    /// with `fc` and `block_size`.
    pub fn new(
        tree: &Tree,
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Self, BackhandError> {
        let blocks = planned_blocks(tree, block_size as usize);
        let done: Vec<(Digest, Vec<u8>)> = blocks
            .par_iter()
            .map(|block| {
                Ok((
                    Digest::of(block),
                    DefaultCompressor.compress(block, fc, block_size)?,
                ))
            })
            .collect::<Result<_, BackhandError>>()?;
        let settings = settings(&fc);
        let mut map = BLOCKS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = Vec::with_capacity(done.len());
        for (digest, data) in done {
            let key = (settings.clone(), digest);
            map.entry(key.clone())
                .and_modify(|(holders, _)| *holders += 1)
                .or_insert_with(|| (1, data.into()));
            keys.push(key);
        }
        Ok(Self { keys })
    }
}

impl Drop for Precompressed {
    fn drop(&mut self) {
        let mut map = BLOCKS.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some((holders, _)) = map.get_mut(key) {
                *holders -= 1;
                if *holders == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// The blocks backhand's writer compresses for `tree`'s files, in its order: files by
/// path as `Path` orders them (component by component), each file of `block` bytes or
/// more cut into chunks of `block` (all-zero chunks become holes and are left out), and the
/// smaller files packed into fragment blocks.
pub fn planned_blocks(tree: &Tree, block: usize) -> Vec<Vec<u8>> {
    let mut files: Vec<(&str, &[u8])> = tree
        .iter()
        .filter_map(|(path, entry)| match &entry.node {
            Node::File(data) => Some((path, &data[..])),
            _ => None,
        })
        .collect();
    files.sort_by(|a, b| Path::new(a.0).cmp(Path::new(b.0)));
    let mut blocks = Vec::new();
    let mut fragment: Vec<u8> = Vec::new();
    for (_, data) in files {
        if data.is_empty() {
            continue;
        }
        if data.len() < block {
            if data.len() + fragment.len() > block {
                blocks.push(std::mem::take(&mut fragment));
            }
            fragment.extend_from_slice(data);
            continue;
        }
        for chunk in data.chunks(block) {
            if chunk.iter().any(|b| *b != 0) {
                blocks.push(chunk.to_vec());
            }
        }
    }
    if !fragment.is_empty() {
        blocks.push(fragment);
    }
    blocks
}
