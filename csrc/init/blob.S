/* The session init, embedded in the module: the module execs it from a sealed memfd, so there is
 * no helper file to install, find or keep in step with the module. */
    .section .rodata
    .balign 16
    .global pu_init_blob
    .hidden pu_init_blob
    .type pu_init_blob, @object
pu_init_blob:
    .incbin "pam_unshare-init"
    .global pu_init_blob_end
    .hidden pu_init_blob_end
pu_init_blob_end:
    .section .note.GNU-stack,"",@progbits
